"""Where heavy stages run: in the Dagster run's process (`local`, the default) or as Ray jobs on a cluster
(`ray`), submitted through dagster-ray's Pipes client. The job side calls the same plain functions the local
path calls; data moves as Parquet and safetensors at storage URIs, never as pickles."""

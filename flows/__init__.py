"""Prefect orchestration of the DVC DAG: the `smdm` flow (flows.smdm), the stage graph read
through DVC (flows.dag), its MLflow records (flows.records) and the local servers (flows.servers).
"""

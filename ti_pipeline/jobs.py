"""Jobs: one per partitioning of the dump (a job's assets share one partitions definition)."""

from dagster import AssetSelection, define_asset_job

sage_dump_shards_job = define_asset_job(
    "sage_dump_shards_job",
    selection=AssetSelection.groups("sage_dump") & AssetSelection.assets(["sage_dump", "ioc_file_hashes"], ["sage_dump", "ioc_domains"]),
    description="The shard-partitioned dump collections (file_rep, domain_classification) for one shard.",
    tags={"ti_pipeline/heavy": "bson_decode"},
)
sage_dump_small_collections_job = define_asset_job(
    "sage_dump_small_collections_job",
    selection=AssetSelection.assets(["sage_dump", "ioc_tokens"], ["sage_dump", "ioc_ips"], ["sage_dump", "file_extension_classification"]),
    description="TOKENS (tokens, IPs, domain overlay) and FILE_EXTENSION_CLASSIFICATION.",
)
vt_file_reports_job = define_asset_job(
    "vt_file_reports_job",
    selection=AssetSelection.assets("vt_file_reports"),
    description="One VT feed day (or a range of days) to the vt_file_reports Parquet partition.",
    tags={"ti_pipeline/heavy": "vt_decompress"},
)

# What the vt_parquet_landed sensor starts for a day: the Broccoli sidecar, then the load that needs it.
vt_load_job = define_asset_job(
    "vt_load_job",
    selection=AssetSelection.assets("broccoli_classifications", ["vt_feed", "ioc_file_hashes"]),
    description="One exported VT day: its Broccoli classification sidecar, then the merge into ioc_file_hashes.",
)

threat_actors_job = define_asset_job(
    "threat_actors_job",
    selection=AssetSelection.groups("threat_actors"),
    description="Malpedia sync (one version request when nothing changed), then ATT&CK techniques of changed actors.",
)

jobs = [sage_dump_shards_job, sage_dump_small_collections_job, vt_file_reports_job, vt_load_job, threat_actors_job]

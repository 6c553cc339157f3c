"""Malpedia threat actors and malware families, and their MITRE ATT&CK techniques.

Pure modules (no Dagster): the polite API client (``client``, its request ``budget``), content hashing and change
detection (``records``), the sync itself (``sync``), ATT&CK matching (``attack``) and enrichment
(``enrich``). The loopback server that speaks the Malpedia API for tests and the demo lives in
``ti_pipeline.sample_data`` (``malpedia_server``, ``malpedia_galaxy``).
"""

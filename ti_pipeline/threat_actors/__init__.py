"""Malpedia threat actors and malware families, and their MITRE ATT&CK techniques.

Pure modules (no Dagster): the polite API client (``client``, ``budget``), content hashing and change
detection (``records``), the sync itself (``sync``), ATT&CK matching (``attack``) and enrichment
(``enrich``), and a loopback server that speaks the Malpedia API shape from the data shipped in
``pymispgalaxies`` (``galaxy``, ``local_server``) for tests and the demo.
"""

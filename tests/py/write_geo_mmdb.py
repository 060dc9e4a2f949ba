#!/usr/bin/env python3
"""Writes the two MaxMind-format databases tests/geo_scan.rs scans with (PyPI mmdb-writer).

No real database maps loopback, and the simulated swarm serves its peers on
127.<octet>.<torrent>.<n> (n from 1). These map them, in the layout of GeoIP2/GeoLite2 records:

  127.<octet>.0.0/24   SE, Stockholm, EU;  AS64500 "Loopback Net A"
  127.<octet>.1.0/28   JP, AS (Asia);      AS64501 "Loopback Net B"; its city name is an integer
                       (an odd record: the city stays empty, the country is kept)
  anything else        no entry (so peers 16.. of torrent 1 are misses)

usage: write_geo_mmdb.py OUTPUT_DIR OCTET   (writes city.mmdb and asn.mmdb)
"""
import sys

from mmdb_writer import MMDBWriter, MmdbU32
from netaddr import IPSet

out, octet = sys.argv[1], int(sys.argv[2])
net_a = IPSet([f"127.{octet}.0.0/24"])
net_b = IPSet([f"127.{octet}.1.0/28"])

city = MMDBWriter(
    ip_version=6,
    ipv4_compatible=True,
    database_type="swarmscan-Test-City",
    languages=["en"],
    description="swarmscan test: simulated swarm on loopback",
)
city.insert_network(
    net_a,
    {
        "continent": {"code": "EU", "names": {"en": "Europe"}},
        "country": {"iso_code": "SE", "names": {"en": "Sweden"}},
        "city": {"names": {"en": "Stockholm", "de": "Stockholm"}},
    },
)
city.insert_network(
    net_b,
    {
        "continent": {"code": "AS", "names": {"en": "Asia"}},
        "country": {"iso_code": "JP", "names": {"en": "Japan"}},
        "city": {"names": {"en": MmdbU32(42)}},
    },
)
city.to_db_file(f"{out}/city.mmdb")

asn = MMDBWriter(
    ip_version=6,
    ipv4_compatible=True,
    database_type="swarmscan-Test-ASN",
    languages=["en"],
    description="swarmscan test: simulated swarm on loopback",
)
asn.insert_network(
    net_a,
    {"autonomous_system_number": MmdbU32(64500), "autonomous_system_organization": "Loopback Net A"},
)
asn.insert_network(
    net_b,
    {"autonomous_system_number": MmdbU32(64501), "autonomous_system_organization": "Loopback Net B"},
)
asn.to_db_file(f"{out}/asn.mmdb")

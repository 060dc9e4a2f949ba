#!/usr/bin/env python3
"""Writes the City database tests/sink.rs runs the sink with (PyPI mmdb-writer), in the layout
of GeoIP2/GeoLite2 City records, for three loopback senders:

  127.0.0.2/32   JP, AS; location.time_zone Asia/Tokyo, longitude 139.69
  127.0.0.3/32   US, NA; longitude -74.0, no time zone (local time from the longitude)
  anything else  no entry (local time unknown)

usage: write_sink_geo_mmdb.py OUTPUT_FILE
"""
import sys

from mmdb_writer import MMDBWriter
from netaddr import IPSet

city = MMDBWriter(
    ip_version=6,
    ipv4_compatible=True,
    database_type="swarmscan-Test-City",
    languages=["en"],
    description="swarmscan test: sink senders on loopback",
)
city.insert_network(
    IPSet(["127.0.0.2/32"]),
    {
        "continent": {"code": "AS"},
        "country": {"iso_code": "JP"},
        "location": {"time_zone": "Asia/Tokyo", "longitude": 139.69, "latitude": 35.69},
    },
)
city.insert_network(
    IPSet(["127.0.0.3/32"]),
    {
        "continent": {"code": "NA"},
        "country": {"iso_code": "US"},
        "location": {"longitude": -74.0, "latitude": 40.7},
    },
)
city.to_db_file(sys.argv[1])

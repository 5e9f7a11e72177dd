"""request.cf and the CF-* headers a worker sees: from the edge, with or without a GeoIP database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

CF_WORKER = """
export default {
  fetch(request) {
    return Response.json({
      cf: request.cf,
      ip: request.headers.get("cf-connecting-ip"),
      country: request.headers.get("cf-ipcountry"),
      visitor: request.headers.get("cf-visitor"),
    });
  },
};
"""


def _geoip_database(path: Path) -> str:
    from mmdb_writer import MMDBWriter
    from netaddr import IPSet

    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="GeoLite2-City")
    writer.insert_network(
        IPSet(["127.0.0.0/8"]),
        {
            "country": {"iso_code": "NZ", "is_in_european_union": False},
            "continent": {"code": "OC"},
            "city": {"names": {"en": "Wellington"}},
            "subdivisions": [{"iso_code": "WGN", "names": {"en": "Wellington Region"}}],
            "location": {"latitude": -41.2866, "longitude": 174.7756, "time_zone": "Pacific/Auckland"},
            "postal": {"code": "6011"},
        },
    )
    writer.to_db_file(str(path))
    return str(path)


def test_cf_without_a_geoip_database_has_no_invented_geography(dev: Any) -> None:
    server = dev({"worker.js": CF_WORKER})
    # A client cannot pretend to be someone else through the edge's own headers.
    result = server.get("/", headers={"cf-connecting-ip": "203.0.113.9", "cf-ipcountry": "US"}).json()
    assert result["cf"]["colo"] == "dev"
    assert result["cf"]["httpProtocol"] == "HTTP/1.1"
    assert "country" not in result["cf"] and "city" not in result["cf"]
    assert result["ip"] == "127.0.0.1"
    assert result["country"] is None
    assert result["visitor"] == '{"scheme":"http"}'


def test_cf_geography_from_a_maxmind_database(dev: Any, tmp_path: Path) -> None:
    database = _geoip_database(tmp_path / "city.mmdb")
    server = dev({"worker.js": CF_WORKER}, "worker.js", "--geoip-db", database)
    result = server.get("/").json()
    cf = result["cf"]
    assert cf["country"] == "NZ"
    assert cf["city"] == "Wellington"
    assert cf["continent"] == "OC"
    assert cf["regionCode"] == "WGN"
    assert cf["latitude"] == "-41.2866"
    assert cf["timezone"] == "Pacific/Auckland"
    assert cf["postalCode"] == "6011"
    assert result["country"] == "NZ"

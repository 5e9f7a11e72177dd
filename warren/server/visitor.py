"""What the edge knows about a visitor: ``request.cf`` and the CF-* request headers.

As on Cloudflare, a worker sees the client's address in ``CF-Connecting-IP``
and facts about the connection in ``request.cf``: the node's name as
``colo``, and country, city, ASN and the like only where a MaxMind database
(GeoLite2/GeoIP2 City, Country or ASN, read with ``maxminddb``) is configured.
Without one those fields are absent, never guessed. Headers a client sends
under these names are dropped, so a worker cannot be fooled by them.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Sequence
from typing import Any

import maxminddb

# Request headers only the edge may set.
EDGE_HEADERS = frozenset({"cf-connecting-ip", "cf-ipcountry", "cf-ray", "cf-visitor", "x-real-ip", "x-forwarded-for"})


_CF_VISITOR = {scheme: f'{{"scheme":"{scheme}"}}' for scheme in ("http", "https")}


class Visitors:
    """Describes visitors for one node; the databases are opened once."""

    def __init__(self, colo: str, geoip_paths: Sequence[str] = ()) -> None:
        self.colo = colo
        self._readers = [maxminddb.open_database(path) for path in geoip_paths]

    def close(self) -> None:
        for reader in self._readers:
            reader.close()

    def lookup(self, address: str) -> dict[str, Any]:
        """The geography of ``address`` as request.cf fields (empty without a database or a match)."""
        if not self._readers:
            return {}
        try:
            ipaddress.ip_address(address)
        except ValueError:
            return {}
        cf: dict[str, Any] = {}
        for reader in self._readers:
            try:
                record = reader.get(address)
            except (ValueError, maxminddb.InvalidDatabaseError):
                continue
            if isinstance(record, dict):
                cf.update(_fields(record))
        return cf

    def describe(
        self, client: str | None, headers: list[tuple[str, str]], scheme: str, http_version: str
    ) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        """``request.cf`` and the request headers as the worker sees them."""
        kept = [(name, value) for name, value in headers if name.lower() not in EDGE_HEADERS]
        cf: dict[str, Any] = {"colo": self.colo, "httpProtocol": f"HTTP/{http_version}"}
        accept_encoding = next((v for n, v in headers if n.lower() == "accept-encoding"), None)
        if accept_encoding is not None:
            cf["clientAcceptEncoding"] = accept_encoding
        if client:
            cf.update(self.lookup(client))
            kept += [("cf-connecting-ip", client), ("x-real-ip", client), ("x-forwarded-for", client)]
        if "country" in cf:
            kept.append(("cf-ipcountry", str(cf["country"])))
        kept.append(("cf-visitor", _CF_VISITOR.get(scheme) or json.dumps({"scheme": scheme}, separators=(",", ":"))))
        return cf, kept


def _fields(record: dict[str, Any]) -> dict[str, Any]:
    cf: dict[str, Any] = {}
    country = record.get("country") or record.get("registered_country")
    if isinstance(country, dict) and country.get("iso_code"):
        cf["country"] = country["iso_code"]
        if country.get("is_in_european_union"):
            cf["isEUCountry"] = "1"
    continent = record.get("continent")
    if isinstance(continent, dict) and continent.get("code"):
        cf["continent"] = continent["code"]
    city = record.get("city")
    if isinstance(city, dict) and isinstance(city.get("names"), dict) and city["names"].get("en"):
        cf["city"] = city["names"]["en"]
    subdivisions = record.get("subdivisions")
    if isinstance(subdivisions, list) and subdivisions and isinstance(subdivisions[0], dict):
        first = subdivisions[0]
        if first.get("iso_code"):
            cf["regionCode"] = first["iso_code"]
        if isinstance(first.get("names"), dict) and first["names"].get("en"):
            cf["region"] = first["names"]["en"]
    location = record.get("location")
    if isinstance(location, dict):
        # Cloudflare gives coordinates as strings.
        if location.get("latitude") is not None:
            cf["latitude"] = str(location["latitude"])
        if location.get("longitude") is not None:
            cf["longitude"] = str(location["longitude"])
        if location.get("time_zone"):
            cf["timezone"] = location["time_zone"]
    postal = record.get("postal")
    if isinstance(postal, dict) and postal.get("code"):
        cf["postalCode"] = postal["code"]
    if record.get("autonomous_system_number") is not None:
        cf["asn"] = int(record["autonomous_system_number"])
    if record.get("autonomous_system_organization"):
        cf["asOrganization"] = record["autonomous_system_organization"]
    return cf

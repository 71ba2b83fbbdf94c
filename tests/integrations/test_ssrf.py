"""The SSRF guard's rules (apps.integrations.ssrf), as pure functions of the resolved
addresses and WEBHOOK_ALLOWED_HOSTS; the resolution itself is tested against real receivers
in test_outgoing.py."""

import pytest

from apps.integrations import ssrf


@pytest.mark.parametrize(
    "address",
    [
        "127.0.0.1",
        "127.8.9.10",
        "10.0.0.1",
        "172.16.5.4",
        "192.168.1.1",
        "169.254.169.254",
        "100.64.0.1",
        "0.0.0.0",
        "::1",
        "fe80::1",
        "fc00::1",
        "::ffff:127.0.0.1",
        "::ffff:10.0.0.1",
        "224.0.0.1",
        "ff02::1",
        "198.18.0.1",
    ],
)
def test_non_public_addresses_are_refused_with_the_wildcard(settings, address):
    settings.WEBHOOK_ALLOWED_HOSTS = ["*"]
    with pytest.raises(ssrf.Refused):
        ssrf.check_address("hooks.example.com", address)


def test_public_addresses_pass_the_wildcard_only(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["*"]
    ssrf.check_address("hooks.example.com", "93.184.216.34")
    ssrf.check_address("hooks.example.com", "2606:2800:220:1:248:1893:25c8:1946")
    settings.WEBHOOK_ALLOWED_HOSTS = ["other.example.org"]
    with pytest.raises(ssrf.Refused, match="not in WEBHOOK_ALLOWED_HOSTS"):
        ssrf.check_address("hooks.example.com", "93.184.216.34")


def test_listing_by_name_domain_address_or_network(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["ci.internal", ".corp.example", "10.1.0.0/16", "::1"]
    ssrf.check_address("ci.internal", "10.9.9.9")  # by name
    ssrf.check_address("build.corp.example", "192.168.3.3")  # by domain
    ssrf.check_address("corp.example", "192.168.3.3")
    ssrf.check_address("anything", "10.1.200.7")  # by network
    ssrf.check_address("anything", "::1")  # by address
    for host, address in [
        ("notcorp.example", "192.168.3.3"),
        ("anything", "10.2.0.1"),
        ("ci.internal.evil", "10.9.9.9"),
    ]:
        with pytest.raises(ssrf.Refused):
            ssrf.check_address(host, address)


def test_every_address_of_a_name_must_pass(settings):
    settings.WEBHOOK_ALLOWED_HOSTS = ["*"]
    assert ssrf.choose("a.example", ["93.184.216.34"]) == "93.184.216.34"
    with pytest.raises(ssrf.Refused, match="127.0.0.1"):
        ssrf.choose("rebind.example", ["93.184.216.34", "127.0.0.1"])
    with pytest.raises(ssrf.Refused, match="does not resolve"):
        ssrf.choose("empty.example", [])


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/",
        "http://user:pw@example.com/",
        "http:///nohost",
        "example.com",
        "http://example.com:99999/",
        "http://example.com/a b",
        "http://example.com/\r\nX: y",
        42,
        "http://" + "a" * 2000 + ".com/",
    ],
)
def test_malformed_urls_are_refused(url):
    with pytest.raises(ssrf.Refused):
        ssrf.parse(url)


def test_parse_keeps_the_path_query_and_default_ports():
    assert ssrf.parse("https://Hooks.Example.com./in?x=1") == (
        "https",
        "hooks.example.com",
        443,
        "/in?x=1",
    )
    assert ssrf.parse("http://[::1]:8080") == ("http", "::1", 8080, "/")

"""Kubernetes naming rules: each check returns what is wrong with a value, or None."""

from __future__ import annotations

import re

_DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_DNS1035_LABEL = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_IANA_SVC_NAME = re.compile(r"[a-z0-9-]+")

DNS_LABEL_MAX = 63
DNS_SUBDOMAIN_MAX = 253
QUALIFIED_NAME_MAX = 63
LABEL_VALUE_MAX = 63
IANA_SVC_NAME_MAX = 15


def dns_label_problem(value: str) -> str | None:
    if len(value) > DNS_LABEL_MAX:
        return f"must be no more than {DNS_LABEL_MAX} characters"
    if not _DNS_LABEL.fullmatch(value):
        return (
            "must be a DNS-1123 label: lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return None


def dns1035_label_problem(value: str) -> str | None:
    if len(value) > DNS_LABEL_MAX:
        return f"must be no more than {DNS_LABEL_MAX} characters"
    if not _DNS1035_LABEL.fullmatch(value):
        return (
            "must be a DNS-1035 label: lowercase letters, digits and '-', "
            "starting with a letter and ending with a letter or digit"
        )
    return None


def dns_subdomain_problem(value: str) -> str | None:
    if len(value) > DNS_SUBDOMAIN_MAX:
        return f"must be no more than {DNS_SUBDOMAIN_MAX} characters"
    if not all(_DNS_LABEL.fullmatch(part) for part in value.split(".")):
        return (
            "must be a DNS-1123 subdomain: lowercase letters, digits, '-' and '.', "
            "starting and ending with a letter or digit"
        )
    return None


def qualified_name_problem(value: str) -> str | None:
    """Label and annotation keys: an optional DNS subdomain prefix, '/', and a name."""
    prefix, slash, name = value.rpartition("/")
    if slash:
        if not prefix:
            return "prefix before '/' must not be empty"
        problem = dns_subdomain_problem(prefix)
        if problem is not None:
            return f'prefix "{prefix}" {problem}'
    if not name:
        return "name part must not be empty"
    if len(name) > QUALIFIED_NAME_MAX:
        return f"name part must be no more than {QUALIFIED_NAME_MAX} characters"
    if not _QUALIFIED_NAME.fullmatch(name):
        return (
            "name part must consist of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def label_value_problem(value: str) -> str | None:
    if len(value) > LABEL_VALUE_MAX:
        return f"must be no more than {LABEL_VALUE_MAX} characters"
    if value and not _QUALIFIED_NAME.fullmatch(value):
        return (
            "must be empty or consist of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def port_name_problem(value: str) -> str | None:
    """IANA_SVC_NAME, the rule for named container ports and named target ports."""
    if len(value) > IANA_SVC_NAME_MAX:
        return f"must be no more than {IANA_SVC_NAME_MAX} characters"
    if not _IANA_SVC_NAME.fullmatch(value):
        return "must contain only lowercase letters, digits and '-'"
    if not any(char.isalpha() for char in value):
        return "must contain at least one letter (a-z)"
    if value.startswith("-") or value.endswith("-"):
        return "must not begin or end with '-'"
    if "--" in value:
        return "must not contain '--'"
    return None

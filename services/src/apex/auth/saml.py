"""SAML 2.0 service provider: SP-initiated Web SSO (HTTP-Redirect AuthnRequest, HTTP-POST
Response to the ACS).

Signatures are verified by signxml with the IdP's certificate from its metadata, and
only the element signxml returns as signed is read (signature-wrapping defence): the
signed Response (its Status, InResponseTo and Assertion), or the signed Assertion. A
document with more than one Assertion, or whose only Assertion is not the signed one, is
refused outright; so is a signed Response that is not the document itself (e.g. hidden in
the ``samlp:Extensions`` of a forged one, whose Status and InResponseTo would otherwise
be believed).
Checks: Status Success, Issuer, Audience, bearer SubjectConfirmationData (Recipient,
NotOnOrAfter, InResponseTo), Conditions NotBefore/NotOnOrAfter with 60 s of skew.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import dataclasses
import datetime as dt
import secrets
import time
import zlib
from collections.abc import Sequence
from typing import Any, Final
from urllib.parse import urlencode
from xml.sax.saxutils import quoteattr

import httpx
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lxml import etree  # type: ignore[import-untyped,unused-ignore]
from redis.asyncio import Redis
from signxml.exceptions import (
    InvalidCertificate,
    InvalidDigest,
    InvalidInput,
    InvalidSignature,
    SignXMLException,
)
from signxml.verifier import SignatureConfiguration, XMLVerifier

__all__ = ["IdpMetadata", "SamlError", "SamlServiceProvider", "VerifiedAssertion", "parse_metadata"]

SKEW_SECONDS: Final = 60
REQUEST_TTL: Final = 600
MAX_RESPONSE_BYTES: Final = 256 * 1024
NS: Final = {
    "samlp": "urn:oasis:names:tc:SAML:2.0:protocol",
    "saml": "urn:oasis:names:tc:SAML:2.0:assertion",
    "md": "urn:oasis:names:tc:SAML:2.0:metadata",
    "ds": "http://www.w3.org/2000/09/xmldsig#",
}
REDIRECT_BINDING: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST_BINDING: Final = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
BEARER: Final = "urn:oasis:names:tc:SAML:2.0:cm:bearer"
SUCCESS: Final = "urn:oasis:names:tc:SAML:2.0:status:Success"
_EMAIL_ATTRIBUTES: Final = (
    "email",
    "mail",
    "urn:oid:0.9.2342.19200300.100.1.3",
    "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/emailaddress",
)
_SAML: Final = "{urn:oasis:names:tc:SAML:2.0:assertion}"
_SAMLP: Final = "{urn:oasis:names:tc:SAML:2.0:protocol}"
_DS: Final = "{http://www.w3.org/2000/09/xmldsig#}"


class SamlError(Exception):
    """The SAML response failed a check; the message says which (401 invalid_saml)."""


class SamlUnavailable(Exception):
    """The IdP metadata could not be fetched or understood (502 idp_unavailable)."""


def _parser() -> etree.XMLParser:
    # No entities, no network, no DTD loading: XML from the outside is hostile.
    return etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False)


def _parse(data: bytes) -> Any:
    try:
        root = etree.fromstring(data, parser=_parser())
    except etree.XMLSyntaxError as exc:
        raise SamlError(f"not well-formed XML ({exc.msg[:100]})") from None
    if root.getroottree().docinfo.internalDTD is not None or root.getroottree().docinfo.doctype:
        raise SamlError("documents with a DTD are refused")
    return root


@dataclasses.dataclass(frozen=True)
class IdpMetadata:
    """What the SP needs from the IdP's metadata."""

    entity_id: str
    sso_url: str
    certificates: tuple[str, ...]  # PEM


def parse_metadata(data: bytes) -> IdpMetadata:
    """Entity id, HTTP-Redirect SSO URL and signing certificates of an IdP's metadata."""
    try:
        root = _parse(data)
    except SamlError as exc:
        raise SamlUnavailable(f"IdP metadata: {exc}") from None
    if root.tag == f"{{{NS['md']}}}EntityDescriptor":
        entity = root
    else:
        entity = root.find(".//md:EntityDescriptor[md:IDPSSODescriptor]", NS)
    if entity is None or not entity.get("entityID"):
        raise SamlUnavailable("IdP metadata has no EntityDescriptor with an entityID")
    idp = entity.find("md:IDPSSODescriptor", NS)
    if idp is None:
        raise SamlUnavailable("IdP metadata has no IDPSSODescriptor")
    sso = idp.find(f"md:SingleSignOnService[@Binding='{REDIRECT_BINDING}']", NS)
    if sso is None or not sso.get("Location"):
        raise SamlUnavailable("IdP metadata has no HTTP-Redirect SingleSignOnService")
    certificates = []
    for descriptor in idp.findall("md:KeyDescriptor", NS):
        if descriptor.get("use", "signing") != "signing":
            continue
        for element in descriptor.findall(".//ds:X509Certificate", NS):
            der_b64 = "".join((element.text or "").split())
            try:
                cert = x509.load_der_x509_certificate(base64.b64decode(der_b64))
            except (ValueError, binascii.Error):
                continue
            pem = cert.public_bytes(Encoding.PEM).decode()
            certificates.append(pem)
    if not certificates:
        raise SamlUnavailable("IdP metadata has no signing certificate")
    return IdpMetadata(
        entity_id=str(entity.get("entityID")),
        sso_url=str(sso.get("Location")),
        certificates=tuple(certificates),
    )


@dataclasses.dataclass(frozen=True)
class VerifiedAssertion:
    """What a verified assertion says (read from the signed element only)."""

    id: str
    name_id: str
    email: str | None
    groups: tuple[str, ...]
    tenant: str | None
    in_response_to: str
    not_on_or_after: float


def authn_request(
    *, request_id: str, sp_entity_id: str, acs_url: str, destination: str, now: dt.datetime
) -> str:
    """The AuthnRequest XML."""
    instant = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return (
        f'<samlp:AuthnRequest xmlns:samlp="{NS["samlp"]}" xmlns:saml="{NS["saml"]}" '
        f'ID={quoteattr(request_id)} Version="2.0" IssueInstant="{instant}" '
        f"Destination={quoteattr(destination)} AssertionConsumerServiceURL={quoteattr(acs_url)} "
        f'ProtocolBinding="{POST_BINDING}">'
        f"<saml:Issuer>{_escape(sp_entity_id)}</saml:Issuer>"
        '<samlp:NameIDPolicy Format="urn:oasis:names:tc:SAML:1.1:nameid-format:unspecified" '
        'AllowCreate="true"/>'
        "</samlp:AuthnRequest>"
    )


def encode_redirect(xml: str) -> str:
    """DEFLATE (raw) + base64, the HTTP-Redirect binding's encoding."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    deflated = compressor.compress(xml.encode()) + compressor.flush()
    return base64.b64encode(deflated).decode("ascii")


class SamlServiceProvider:
    """Our SP towards the IdP of APEX_SAML_IDP_METADATA_URL."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        redis: Redis,
        *,
        prefix: str,
        metadata_url: str,
        sp_entity_id: str,
        acs_url: str,
    ) -> None:
        self._http = http
        self._redis = redis
        self._prefix = prefix
        self.metadata_url = metadata_url
        self.sp_entity_id = sp_entity_id
        self.acs_url = acs_url
        self._metadata: IdpMetadata | None = None
        self._fetched_at = 0.0

    def request_key(self, request_id: str) -> str:
        """Redis key of a pending AuthnRequest."""
        return f"{self._prefix}saml_req:{request_id}"

    def seen_key(self, assertion_id: str) -> str:
        """Redis key remembering a consumed assertion id (replay detection)."""
        return f"{self._prefix}saml_seen:{assertion_id}"

    async def metadata(self, *, refresh: bool = False) -> IdpMetadata:
        """The IdP's metadata (cached; ``refresh`` refetches)."""
        if self._metadata is None or refresh:
            try:
                response = await self._http.get(self.metadata_url)
            except httpx.HTTPError as exc:
                raise SamlUnavailable(f"IdP metadata unreachable: {type(exc).__name__}") from None
            if response.status_code != 200:
                raise SamlUnavailable(f"IdP metadata answered {response.status_code}")
            self._metadata = parse_metadata(response.content)
            self._fetched_at = time.monotonic()
        return self._metadata

    async def login_url(self, relay_state: str) -> str:
        """The IdP SSO URL carrying a fresh AuthnRequest (its ID is stored for InResponseTo)."""
        metadata = await self.metadata()
        request_id = "_" + secrets.token_hex(20)
        xml = authn_request(
            request_id=request_id,
            sp_entity_id=self.sp_entity_id,
            acs_url=self.acs_url,
            destination=metadata.sso_url,
            now=dt.datetime.now(dt.UTC),
        )
        await self._redis.set(self.request_key(request_id), "1", ex=REQUEST_TTL)
        query = urlencode({"SAMLRequest": encode_redirect(xml), "RelayState": relay_state})
        separator = "&" if "?" in metadata.sso_url else "?"
        return f"{metadata.sso_url}{separator}{query}"

    async def verify(self, saml_response: str) -> VerifiedAssertion:
        """Check a base64 SAMLResponse; the assertion it vouches for (not yet replay-checked)."""
        metadata = await self.metadata()
        try:
            return await asyncio.to_thread(
                verify_response, saml_response, metadata, self.sp_entity_id, self.acs_url
            )
        except _BadSignature as exc:
            # The IdP may have rolled its certificate: refetch the metadata once (at most
            # once a minute) and try again.
            if time.monotonic() - self._fetched_at < 60:
                raise SamlError(str(exc)) from None
        metadata = await self.metadata(refresh=True)
        try:
            return await asyncio.to_thread(
                verify_response, saml_response, metadata, self.sp_entity_id, self.acs_url
            )
        except _BadSignature as exc:
            raise SamlError(str(exc)) from None

    async def accept(self, assertion: VerifiedAssertion) -> None:
        """Replay and InResponseTo checks, which consume state: call after :meth:`verify`.

        Raises SamlReplay for an assertion id seen before, SamlError for an unknown
        (or already answered) request.
        """
        ttl = max(1, int(assertion.not_on_or_after - time.time()) + SKEW_SECONDS)
        first = await self._redis.set(self.seen_key(assertion.id), "1", nx=True, ex=ttl)
        if not first:
            raise SamlReplay("this assertion has been used already")
        if not await self._redis.delete(self.request_key(assertion.in_response_to)):
            raise SamlError("InResponseTo: no pending request with this id (unsolicited or used)")


class SamlReplay(Exception):
    """An assertion id presented twice (401 saml_replay)."""


class _BadSignature(SamlError):
    pass


def verify_response(
    saml_response: str,
    metadata: IdpMetadata,
    sp_entity_id: str,
    acs_url: str,
    *,
    now: float | None = None,
) -> VerifiedAssertion:
    """Every stateless check of a SAMLResponse (runs in a thread: XML work is CPU-bound)."""
    current = time.time() if now is None else now
    text = "".join(saml_response.split())
    if len(text) > MAX_RESPONSE_BYTES * 4 // 3 + 4:
        raise SamlError("SAMLResponse too large")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SamlError("SAMLResponse is not base64") from None
    root = _parse(raw)
    if root.tag != f"{_SAMLP}Response":
        raise SamlError("not a samlp:Response")
    status = root.find("samlp:Status/samlp:StatusCode", NS)
    if status is None or status.get("Value") != SUCCESS:
        value = status.get("Value") if status is not None else "missing"
        raise SamlError(f"Status: the IdP reports {str(value).rsplit(':', 1)[-1]}")
    if root.findall(".//saml:EncryptedAssertion", NS):
        raise SamlError("encrypted assertions are not supported")
    assertions = root.findall(".//saml:Assertion", NS)
    if len(assertions) != 1:
        raise SamlError(f"expected exactly one Assertion, found {len(assertions)}")

    signed_response = root.find("ds:Signature", NS) is not None
    if signed_response:
        signed = _verify_signature(raw, metadata.certificates, location="./")
        if signed.tag != f"{_SAMLP}Response":
            raise SamlError("signature: the signed element is not the Response")
        response_id = signed.get("ID")
        if (
            not response_id
            or response_id != root.get("ID")
            or int(root.xpath("count(//*[@ID=$id])", id=response_id)) != 1
        ):
            raise SamlError("signature: the signed Response is not the document's root")
        # Everything below comes from the signed copy, never from the document as sent.
        signed_status = signed.find("samlp:Status/samlp:StatusCode", NS)
        if signed_status is None or signed_status.get("Value") != SUCCESS:
            raise SamlError("Status: the signed Response does not report Success")
        inner = signed.findall("saml:Assertion", NS)
        if len(inner) != 1:
            raise SamlError("the signed Response does not hold exactly one Assertion")
        assertion = inner[0]
    elif assertions[0].getparent() is root and assertions[0].find("ds:Signature", NS) is not None:
        assertion = _verify_signature(raw, metadata.certificates, location=f"./{_SAML}Assertion/")
        if assertion.tag != f"{_SAML}Assertion":
            raise SamlError("signature: the signed element is not an Assertion")
    else:
        raise SamlError("signature: neither the Response nor the Assertion is signed")
    if assertion.get("ID") != assertions[0].get("ID"):
        raise SamlError("signature: the signed Assertion is not the one presented (wrapping)")

    assertion_id = assertion.get("ID")
    if not assertion_id:
        raise SamlError("the Assertion has no ID")
    issuer = _text(assertion.find("saml:Issuer", NS))
    if issuer != metadata.entity_id:
        raise SamlError(f"Issuer: {issuer[:100]!r} is not the IdP {metadata.entity_id!r}")

    conditions = assertion.find("saml:Conditions", NS)
    if conditions is None:
        raise SamlError("Conditions: missing")
    _check_window(conditions, "Conditions", current)
    audiences = [_text(a) for a in conditions.findall("saml:AudienceRestriction/saml:Audience", NS)]
    if sp_entity_id not in audiences:
        raise SamlError(f"Audience: the assertion is not for {sp_entity_id!r}")

    subject = assertion.find("saml:Subject", NS)
    name_id = _text(subject.find("saml:NameID", NS)) if subject is not None else ""
    if not name_id:
        raise SamlError("Subject: no NameID")
    data = _bearer_confirmation(subject, acs_url, current)
    # The Response's InResponseTo counts only when the signature covers it.
    in_response_to = data.get("InResponseTo") or (
        signed.get("InResponseTo") if signed_response else None
    )
    if not in_response_to:
        raise SamlError("InResponseTo: unsolicited responses are refused")

    attributes = _attributes(assertion)
    email = next((attributes[n][0] for n in _EMAIL_ATTRIBUTES if attributes.get(n)), None)
    if email is None and "@" in name_id:
        email = name_id
    limits = [_time(data.get("NotOnOrAfter"), "SubjectConfirmationData")]
    if conditions.get("NotOnOrAfter"):
        limits.append(_time(conditions.get("NotOnOrAfter"), "Conditions"))
    return VerifiedAssertion(
        id=str(assertion_id),
        name_id=name_id,
        email=email,
        groups=tuple(attributes.get("groups", ())),
        tenant=next(iter(attributes.get("tenant", ())), None),
        in_response_to=str(in_response_to),
        not_on_or_after=min(limits),
    )


def _verify_signature(raw: bytes, certificates: Sequence[str], *, location: str) -> Any:
    config = SignatureConfiguration(location=location)
    last: Exception | None = None
    for pem in certificates:
        try:
            result = XMLVerifier().verify(
                raw, x509_cert=pem, expect_config=config, parser=_parser()
            )
        except (InvalidSignature, InvalidDigest, InvalidCertificate) as exc:
            last = exc
            continue
        except (InvalidInput, SignXMLException, etree.XMLSyntaxError, ValueError) as exc:
            raise SamlError(f"signature: {str(exc)[:150]}") from None
        if isinstance(result, list):  # pragma: no cover - expect_references=1 returns one
            raise SamlError("signature: more than one reference")
        return result.signed_xml
    reason = str(last)[:150] if last else "no certificate"
    raise _BadSignature(f"signature: does not verify with the IdP's certificate ({reason})")


def _bearer_confirmation(subject: Any, acs_url: str, now: float) -> dict[str, str]:
    problems = []
    for confirmation in subject.findall("saml:SubjectConfirmation", NS):
        if confirmation.get("Method") != BEARER:
            continue
        data = confirmation.find("saml:SubjectConfirmationData", NS)
        if data is None:
            problems.append("no SubjectConfirmationData")
            continue
        if data.get("Recipient") != acs_url:
            problems.append(f"Recipient is not {acs_url}")
            continue
        if not data.get("NotOnOrAfter"):
            problems.append("no NotOnOrAfter")
            continue
        if _time(data.get("NotOnOrAfter"), "SubjectConfirmationData") <= now - SKEW_SECONDS:
            problems.append("NotOnOrAfter has passed (expired)")
            continue
        if data.get("NotBefore") and _time(data.get("NotBefore"), "Subject") > now + SKEW_SECONDS:
            problems.append("NotBefore is in the future")
            continue
        return {key: str(value) for key, value in data.attrib.items()}
    detail = "; ".join(problems) or "no bearer SubjectConfirmation"
    raise SamlError(f"SubjectConfirmation: {detail}")


def _check_window(element: Any, what: str, now: float) -> None:
    not_before = element.get("NotBefore")
    not_on_or_after = element.get("NotOnOrAfter")
    if not_before and _time(not_before, what) > now + SKEW_SECONDS:
        raise SamlError(f"{what}: NotBefore is in the future (not yet valid)")
    if not_on_or_after and _time(not_on_or_after, what) <= now - SKEW_SECONDS:
        raise SamlError(f"{what}: NotOnOrAfter has passed (expired)")


def _time(value: str | None, what: str) -> float:
    if not value:
        raise SamlError(f"{what}: missing time")
    text = value.strip()
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    if "." in text:  # fractions beyond microseconds
        head, _, tail = text.partition(".")
        digits = "".join(ch for ch in tail if ch.isdigit())
        text = f"{head}.{digits[:6]}{tail[len(digits) :]}"
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise SamlError(f"{what}: {value[:40]!r} is not an xs:dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


def _attributes(assertion: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for attribute in assertion.findall("saml:AttributeStatement/saml:Attribute", NS):
        name = attribute.get("Name")
        if not name:
            continue
        values = [_text(v) for v in attribute.findall("saml:AttributeValue", NS)]
        found.setdefault(str(name), []).extend(v for v in values if v)
    return found


def _text(element: Any) -> str:
    if element is None:
        return ""
    return "".join(element.itertext()).strip()


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

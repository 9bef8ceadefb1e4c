"""A fake SAML 2.0 identity provider: metadata, /sso (HTTP-Redirect binding), and
responses signed with signxml (RSA-SHA256, exclusive c14n), good or bad on request.

`/sso` parses the AuthnRequest, records it and answers the HTML auto-post form a real
IdP answers, for the user `login_as` named. `response_for(...)` builds a SAMLResponse
for a recorded request (or a bare request ID, or none: IdP-initiated) with a chosen
defect: unsigned, a tampered attribute after signing, a signature-wrapping attack,
expired, not yet valid, wrong audience/recipient/issuer.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import secrets
import zlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from lxml import etree
from signxml.algorithms import CanonicalizationMethod, DigestAlgorithm, SignatureMethod
from signxml.signer import XMLSigner
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route

from apex_testkit._fakes._control import FakeClient
from apex_testkit._fakes._server import CONTROL, FakeServer
from apex_testkit._keys import rsa_key

SAMLP = "urn:oasis:names:tc:SAML:2.0:protocol"
SAML = "urn:oasis:names:tc:SAML:2.0:assertion"
MD = "urn:oasis:names:tc:SAML:2.0:metadata"
DS = "http://www.w3.org/2000/09/xmldsig#"
REDIRECT_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect"
POST_BINDING = "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
SUCCESS = "urn:oasis:names:tc:SAML:2.0:status:Success"
NSMAP = {"samlp": SAMLP, "saml": SAML}
# The SP a response is for when the request is only an ID the fake never saw.
DEFAULT_SP_ENTITY_ID = "apex-auth"
DEFAULT_ACS_URL = "http://auth.apex.test/auth/saml/acs"
# Who a signature-wrapping response claims to be (in its unsigned, injected assertion).
WRAPPING_NAME_ID = "attacker@evil.test"
WRAPPING_EMAIL = "attacker@evil.test"
VALIDITY = dt.timedelta(minutes=5)


def _instant(when: dt.datetime) -> str:
    return when.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _new_id() -> str:
    return "_" + secrets.token_hex(16)


def _signing_pair() -> tuple[rsa.RSAPrivateKey, str]:
    """The fake's RSA key and a self-signed certificate for it (PEM)."""
    key = rsa_key("fake-saml")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "apex-testkit fake SAML IdP")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return key, cert.public_bytes(serialization.Encoding.PEM).decode()


def parse_authn_request(saml_request: str) -> dict[str, str]:
    """ID, AssertionConsumerServiceURL and Issuer of a Redirect-binding SAMLRequest
    (base64 of raw DEFLATE); also accepts plain base64 XML (the POST binding)."""
    data = base64.b64decode(saml_request)
    try:
        xml = zlib.decompress(data, -15)
    except zlib.error:
        xml = data
    root = etree.fromstring(xml, parser=etree.XMLParser(resolve_entities=False, no_network=True))
    if root.tag != f"{{{SAMLP}}}AuthnRequest":
        raise ValueError(f"not an AuthnRequest: {root.tag}")
    issuer = root.find(f"{{{SAML}}}Issuer")
    return {
        "id": root.get("ID", ""),
        "acs_url": root.get("AssertionConsumerServiceURL", ""),
        "issuer": (issuer.text or "").strip() if issuer is not None else "",
        "destination": root.get("Destination", ""),
    }


def _sub(parent: Any, ns: str, tag: str, text: str | None = None, **attrs: str) -> Any:
    element = etree.SubElement(parent, f"{{{ns}}}{tag}", attrib=attrs)
    if text is not None:
        element.text = text
    return element


def _signature_placeholder(element: Any) -> None:
    """signxml puts the signature where this placeholder is: after the Issuer, as the
    SAML schema requires."""
    issuer = element.find(f"{{{SAML}}}Issuer")
    placeholder = etree.Element(f"{{{DS}}}Signature", Id="placeholder", nsmap={"ds": DS})
    issuer.addnext(placeholder)


@dataclass(frozen=True)
class _Window:
    """What an assertion is for and when it is valid."""

    request: dict[str, str]
    issuer: str
    audience: str
    recipient: str
    not_before: dt.datetime
    not_after: dt.datetime
    issued: dt.datetime


class SamlServer(FakeServer):
    name = "saml"

    def __init__(self, base_url: str) -> None:
        super().__init__(base_url)
        self.entity_id = f"{base_url}/metadata"
        self.key, self.cert_pem = _signing_pair()
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.identity: dict[str, Any] | None = None
        self.authn_requests: list[dict[str, str]] = []

    def config(self) -> dict[str, Any]:
        return {
            "entity_id": self.entity_id,
            "metadata_url": f"{self.base_url}/metadata",
            "sso_url": f"{self.base_url}/sso",
            "cert_pem": self.cert_pem,
        }

    @property
    def _cert_b64(self) -> str:
        return "".join(line for line in self.cert_pem.splitlines() if "-----" not in line)

    # -- protocol ---------------------------------------------------------------------

    async def metadata(self, request: Request) -> Response:
        base = f"{request.url.scheme}://{request.url.netloc}"
        root = etree.Element(
            f"{{{MD}}}EntityDescriptor", entityID=self.entity_id, nsmap={"md": MD, "ds": DS}
        )
        idp = _sub(
            root,
            MD,
            "IDPSSODescriptor",
            WantAuthnRequestsSigned="false",
            protocolSupportEnumeration=SAMLP,
        )
        key = _sub(idp, MD, "KeyDescriptor", use="signing")
        data = _sub(_sub(key, DS, "KeyInfo"), DS, "X509Data")
        _sub(data, DS, "X509Certificate", self._cert_b64)
        _sub(
            idp,
            MD,
            "NameIDFormat",
            "urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
        )
        _sub(idp, MD, "SingleSignOnService", Binding=REDIRECT_BINDING, Location=f"{base}/sso")
        body = etree.tostring(root, xml_declaration=True, encoding="UTF-8")
        return Response(body, media_type="application/samlmetadata+xml")

    async def sso(self, request: Request) -> Response:
        saml_request = request.query_params.get("SAMLRequest")
        if not saml_request:
            return HTMLResponse("<p>SAMLRequest missing</p>", status_code=400)
        try:
            parsed = parse_authn_request(saml_request)
        except (ValueError, etree.XMLSyntaxError) as exc:
            return HTMLResponse(f"<p>bad SAMLRequest: {html.escape(str(exc))}</p>", 400)
        relay_state = request.query_params.get("RelayState", "")
        self.authn_requests.append({**parsed, "relay_state": relay_state})
        if self.identity is None:
            return HTMLResponse("<p>no user: call fake_saml_idp.login_as() first</p>", 403)
        response = self.response(parsed["id"], **self.identity)
        acs = html.escape(parsed["acs_url"] or DEFAULT_ACS_URL, quote=True)
        relay = html.escape(relay_state, quote=True)
        page = (
            f'<html><body onload="document.forms[0].submit()">'
            f'<form method="post" action="{acs}">'
            f'<input type="hidden" name="SAMLResponse" value="{response}"/>'
            f'<input type="hidden" name="RelayState" value="{relay}"/>'
            f"</form></body></html>"
        )
        return HTMLResponse(page)

    # -- responses --------------------------------------------------------------------

    def _request(self, request: str | None) -> dict[str, str]:
        """The AuthnRequest `request` names: a recorded ID, a SAMLRequest, or a URL
        carrying one; a bare unknown ID gets the default SP; None (IdP-initiated) has
        no ID and goes to the default SP."""
        if request is None:
            return {"id": "", "acs_url": DEFAULT_ACS_URL, "issuer": DEFAULT_SP_ENTITY_ID}
        if "SAMLRequest=" in request:
            request = parse_qs(urlsplit(request).query)["SAMLRequest"][0]
        for recorded in reversed(self.authn_requests):
            if recorded["id"] == request:
                return recorded
        if not request.startswith("_") and len(request) > 40:
            return parse_authn_request(request)
        return {"id": request, "acs_url": DEFAULT_ACS_URL, "issuer": DEFAULT_SP_ENTITY_ID}

    def _assertion(self, window: _Window, name_id: str, email: str, groups: list[str]) -> Any:
        request, issuer, audience, recipient = (
            window.request,
            window.issuer,
            window.audience,
            window.recipient,
        )
        not_before, not_on_or_after, issued = window.not_before, window.not_after, window.issued
        assertion = etree.Element(
            f"{{{SAML}}}Assertion",
            ID=_new_id(),
            Version="2.0",
            IssueInstant=_instant(issued),
            nsmap={"saml": SAML},
        )
        _sub(assertion, SAML, "Issuer", issuer)
        subject = _sub(assertion, SAML, "Subject")
        _sub(
            subject,
            SAML,
            "NameID",
            name_id,
            Format="urn:oasis:names:tc:SAML:1.1:nameid-format:emailAddress",
        )
        confirmation = _sub(
            subject, SAML, "SubjectConfirmation", Method="urn:oasis:names:tc:SAML:2.0:cm:bearer"
        )
        data = _sub(
            confirmation,
            SAML,
            "SubjectConfirmationData",
            NotOnOrAfter=_instant(not_on_or_after),
            Recipient=recipient,
        )
        if request["id"]:  # an IdP-initiated response answers no request (SAML profiles 4.1.4.2)
            data.set("InResponseTo", request["id"])
        conditions = _sub(
            assertion,
            SAML,
            "Conditions",
            NotBefore=_instant(not_before),
            NotOnOrAfter=_instant(not_on_or_after),
        )
        _sub(_sub(conditions, SAML, "AudienceRestriction"), SAML, "Audience", audience)
        statement = _sub(
            assertion,
            SAML,
            "AuthnStatement",
            AuthnInstant=_instant(issued),
            SessionIndex=_new_id(),
        )
        _sub(
            _sub(statement, SAML, "AuthnContext"),
            SAML,
            "AuthnContextClassRef",
            "urn:oasis:names:tc:SAML:2.0:ac:classes:PasswordProtectedTransport",
        )
        attributes = _sub(assertion, SAML, "AttributeStatement")
        email_attribute = _sub(attributes, SAML, "Attribute", Name="email")
        _sub(email_attribute, SAML, "AttributeValue", email)
        groups_attribute = _sub(attributes, SAML, "Attribute", Name="groups")
        for group in groups:
            _sub(groups_attribute, SAML, "AttributeValue", group)
        return assertion

    def _sign(self, element: Any) -> Any:
        _signature_placeholder(element)
        signer = XMLSigner(
            signature_algorithm=SignatureMethod.RSA_SHA256,
            digest_algorithm=DigestAlgorithm.SHA256,
            c14n_algorithm=CanonicalizationMethod.EXCLUSIVE_XML_CANONICALIZATION_1_0,
        )
        # The key object, not its PEM: signxml would load (and validate) the PEM on every
        # signature, tens of milliseconds each.
        return signer.sign(
            element, key=self.key, cert=self.cert_pem, reference_uri=element.get("ID")
        )

    def response(
        self,
        request: str | None,
        name_id: str,
        email: str,
        groups: list[str] | None = None,
        *,
        signed: str | None = "assertion",
        tamper: str | None = None,
        expired: bool = False,
        not_yet_valid: bool = False,
        audience: str | None = None,
        recipient: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """A base64 SAMLResponse (see `FakeSamlIdp.response_for`)."""
        if signed not in ("assertion", "response", None):
            raise ValueError("signed must be 'assertion', 'response' or None")
        if tamper not in (None, "wrapping", "modify_email"):
            raise ValueError("tamper must be None, 'wrapping' or 'modify_email'")
        found = self._request(request)
        now = dt.datetime.now(dt.UTC)
        issued, not_before, not_after = now, now - dt.timedelta(seconds=5), now + VALIDITY
        if expired:
            issued, not_before, not_after = now - 2 * VALIDITY, now - 2 * VALIDITY, now - VALIDITY
        if not_yet_valid:
            not_before = now + 2 * VALIDITY
            not_after = not_before + VALIDITY
        acs = found["acs_url"] or DEFAULT_ACS_URL
        window = _Window(
            request=found,
            issuer=issuer or self.entity_id,
            audience=audience or found["issuer"] or DEFAULT_SP_ENTITY_ID,
            recipient=recipient or acs,
            not_before=not_before,
            not_after=not_after,
            issued=issued,
        )
        assertion = self._assertion(window, name_id, email, list(groups or []))
        if signed == "assertion":
            assertion = self._sign(assertion)
        response = etree.Element(
            f"{{{SAMLP}}}Response",
            ID=_new_id(),
            Version="2.0",
            IssueInstant=_instant(issued),
            Destination=acs,
            nsmap=NSMAP,
        )
        if found["id"]:
            response.set("InResponseTo", found["id"])
        _sub(response, SAML, "Issuer", issuer or self.entity_id)
        status = _sub(response, SAMLP, "Status")
        _sub(status, SAMLP, "StatusCode", Value=SUCCESS)
        response.append(assertion)
        if signed == "response":
            response = self._sign(response)
        if tamper == "modify_email":
            for value in response.iter(f"{{{SAML}}}AttributeValue"):
                if value.getparent().get("Name") == "email":
                    value.text = WRAPPING_EMAIL
        elif tamper == "wrapping":
            evil = self._assertion(window, WRAPPING_NAME_ID, WRAPPING_EMAIL, ["admins"])
            if signed == "response":
                # The signed Response hides in an Extensions element of an evil one.
                outer = etree.Element(
                    f"{{{SAMLP}}}Response", attrib=dict(response.attrib), nsmap=NSMAP
                )
                outer.set("ID", _new_id())
                _sub(outer, SAML, "Issuer", issuer or self.entity_id)
                _sub(outer, SAMLP, "Extensions").append(response)
                status = _sub(outer, SAMLP, "Status")
                _sub(status, SAMLP, "StatusCode", Value=SUCCESS)
                outer.append(evil)
                response = outer
            else:
                # The unsigned evil assertion comes first, the signed original after it.
                response.find(f"{{{SAMLP}}}Status").addnext(evil)
        return base64.b64encode(etree.tostring(response)).decode()

    # -- control ----------------------------------------------------------------------

    async def login(self, request: Request) -> Response:
        body = await request.json()
        self.identity = {
            "name_id": str(body["name_id"]),
            "email": str(body["email"]),
            "groups": [str(g) for g in body.get("groups") or []],
        }
        return Response(status_code=204)

    async def make_response(self, request: Request) -> Response:
        body = await request.json()
        try:
            saml_response = self.response(**body)
        except (ValueError, KeyError, etree.XMLSyntaxError) as exc:
            return JSONResponse({"detail": str(exc)}, status_code=400)
        return JSONResponse({"saml_response": saml_response})

    async def list_authn_requests(self, request: Request) -> Response:
        return JSONResponse(self.authn_requests)

    def routes(self) -> list[BaseRoute]:
        return [
            Route("/metadata", self.metadata),
            Route("/sso", self.sso),
            Route(f"{CONTROL}/login", self.login, methods=["POST"]),
            Route(f"{CONTROL}/response", self.make_response, methods=["POST"]),
            Route(f"{CONTROL}/authn_requests", self.list_authn_requests),
        ]


@dataclass(frozen=True)
class AuthnRequest:
    """An AuthnRequest /sso received."""

    id: str
    acs_url: str
    issuer: str
    relay_state: str


class FakeSamlIdp(FakeClient):
    """The `fake_saml_idp` fixture: a SAML 2.0 IdP on 127.0.0.1.

    `entity_id`, `metadata_url`, `sso_url`, `cert_pem`; `login_as(...)` (who /sso
    answers for); `authn_requests` (what /sso received); `response_for(...)`.
    """

    name = "saml"

    @property
    def entity_id(self) -> str:
        return str(self.config["entity_id"])

    @property
    def metadata_url(self) -> str:
        return str(self.config["metadata_url"])

    @property
    def sso_url(self) -> str:
        return str(self.config["sso_url"])

    @property
    def cert_pem(self) -> str:
        """The signing certificate (the one in the metadata)."""
        return str(self.config["cert_pem"])

    def settings(self) -> dict[str, str]:
        return {"metadata_url": self.metadata_url}

    def login_as(self, name_id: str, email: str, groups: list[str] | tuple[str, ...] = ()) -> None:
        """/sso answers with a signed response for this user from now on (until reset)."""
        self._call("POST", "login", name_id=name_id, email=email, groups=list(groups))

    @property
    def authn_requests(self) -> list[AuthnRequest]:
        """The AuthnRequests /sso received since the last reset, oldest first."""
        return [
            AuthnRequest(r["id"], r["acs_url"], r["issuer"], r["relay_state"])
            for r in self._call("GET", "authn_requests")
        ]

    def response_for(
        self,
        request_id_or_authn_request: str | None,
        name_id: str,
        email: str,
        groups: list[str] | tuple[str, ...] = (),
        *,
        signed: str | None = "assertion",
        tamper: str | None = None,
        expired: bool = False,
        not_yet_valid: bool = False,
        audience: str | None = None,
        recipient: str | None = None,
        issuer: str | None = None,
    ) -> str:
        """A base64 SAMLResponse (the form field the SP's ACS gets).

        The request: an ID /sso recorded (its ACS URL and SP issuer are used), a
        SAMLRequest, the redirect URL carrying one, or any ID (SP "apex-auth", ACS
        http://auth.apex.test/auth/saml/acs); None: an IdP-initiated (unsolicited)
        response for that default SP, with no InResponseTo anywhere. `signed`: "assertion" |
        "response" | None; `tamper`: "modify_email" (changes the email after signing) |
        "wrapping" (an unsigned assertion for attacker@evil.test placed before the signed one);
        `expired`/`not_yet_valid` move the validity window; `audience`, `recipient`,
        `issuer` override what the request implies.
        """
        found = self._call(
            "POST",
            "response",
            request=request_id_or_authn_request,
            name_id=name_id,
            email=email,
            groups=list(groups),
            signed=signed,
            tamper=tamper,
            expired=expired,
            not_yet_valid=not_yet_valid,
            audience=audience,
            recipient=recipient,
            issuer=issuer,
        )
        return str(found["saml_response"])


SERVER = SamlServer
CLIENT = FakeSamlIdp

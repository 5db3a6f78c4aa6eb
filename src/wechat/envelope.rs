//! Callback envelopes: the few fields of a WeChat XML or JSON body that routing and dedupe need.
//!
//! A body is parsed once, at the edge, into an [`Envelope`]; everything else in the body is left
//! alone (the proxy replays the original bytes, never a re-serialisation). XML values may be CDATA
//! or bare text and are kept exactly as written (no trimming: `Encrypt` is signed as it stands).
//! DOCTYPE is refused outright, so no entity can be declared (XXE); only the five predefined
//! entities and character references are resolved. JSON covers mini programs (`ToUserName`, …)
//! and WeCom's lower-case keys (`tousername`, `encrypt`, `agentid`, …).
//!
//! Also builds the encrypted envelopes WeChat expects: replies (`Encrypt`, `MsgSignature`,
//! `TimeStamp`, `Nonce`) and, for simulation, encrypted requests.

use std::fmt::Write as _;

use quick_xml::Reader;
use quick_xml::events::Event;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};

use crate::escape::{Excerpt, MESSAGE_EXCERPT};

/// How much of an unknown entity's name an error quotes.
const ENTITY_EXCERPT: usize = 24;

/// How a body is encoded. WeChat official accounts and WeCom use XML; mini programs may use JSON.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Format {
    #[default]
    Xml,
    Json,
}

/// The routing and dedupe fields of one callback body, each `None` when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub format: Format,
    pub to_user_name: Option<String>,
    pub from_user_name: Option<String>,
    /// Unix seconds as sent; kept as text (some SDKs overflow on 32-bit parses).
    pub create_time: Option<String>,
    pub msg_type: Option<String>,
    pub event: Option<String>,
    pub event_key: Option<String>,
    /// `MsgId` of messages, `MsgID` of the *JOBFINISH events, `msgid` of WeCom JSON.
    pub msg_id: Option<String>,
    pub agent_id: Option<String>,
    /// The base64 ciphertext of compatible/safe mode, exactly as in the body.
    pub encrypt: Option<String>,
    /// Open platform authorization events: the component's `AppId`, the `InfoType`
    /// (`component_verify_ticket`, `authorized`, …) and the `AuthorizerAppid` they concern.
    pub app_id: Option<String>,
    pub info_type: Option<String>,
    pub authorizer_appid: Option<String>,
    /// WeChat Pay, with the APIv3 key: the decrypted resource's `out_trade_no`, for routing.
    pub out_trade_no: Option<String>,
}

/// Why a body is not a usable envelope. The body may not be authenticated yet (safe mode reads
/// `Encrypt` out of it before checking `msg_signature`): what it says is quoted only as an
/// [`Excerpt`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("empty body")]
    Empty,
    #[error("body is neither XML nor JSON")]
    UnknownFormat,
    #[error("XML with a DOCTYPE is refused")]
    Doctype,
    #[error("unknown XML entity &{0};")]
    Entity(Excerpt),
    #[error("element {0} appears twice")]
    DuplicateField(&'static str),
    #[error("malformed XML: {0}")]
    Xml(Excerpt),
    #[error("malformed JSON: {0}")]
    Json(Excerpt),
}

impl EnvelopeError {
    /// A short, stable label for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::Empty => "empty_body",
            EnvelopeError::UnknownFormat => "unknown_format",
            EnvelopeError::Doctype => "xml_doctype",
            EnvelopeError::Entity(_) => "xml_entity",
            EnvelopeError::DuplicateField(_) => "duplicate_field",
            EnvelopeError::Xml(_) => "malformed_xml",
            EnvelopeError::Json(_) => "malformed_json",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    ToUserName,
    FromUserName,
    CreateTime,
    MsgType,
    Event,
    EventKey,
    MsgId,
    AgentId,
    Encrypt,
    AppId,
    InfoType,
    AuthorizerAppid,
}

impl Field {
    /// Element (XML) or key (JSON) names, as WeChat, mini programs and WeCom spell them.
    fn from_name(name: &[u8]) -> Option<Field> {
        Some(match name {
            b"ToUserName" | b"tousername" => Field::ToUserName,
            b"FromUserName" | b"fromusername" => Field::FromUserName,
            b"CreateTime" | b"createtime" => Field::CreateTime,
            b"MsgType" | b"msgtype" => Field::MsgType,
            b"Event" | b"event" => Field::Event,
            b"EventKey" | b"eventkey" => Field::EventKey,
            b"MsgId" | b"MsgID" | b"msgid" => Field::MsgId,
            b"AgentID" | b"AgentId" | b"agentid" => Field::AgentId,
            b"Encrypt" | b"encrypt" => Field::Encrypt,
            b"AppId" => Field::AppId,
            b"InfoType" => Field::InfoType,
            b"AuthorizerAppid" => Field::AuthorizerAppid,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Field::ToUserName => "ToUserName",
            Field::FromUserName => "FromUserName",
            Field::CreateTime => "CreateTime",
            Field::MsgType => "MsgType",
            Field::Event => "Event",
            Field::EventKey => "EventKey",
            Field::MsgId => "MsgId",
            Field::AgentId => "AgentID",
            Field::Encrypt => "Encrypt",
            Field::AppId => "AppId",
            Field::InfoType => "InfoType",
            Field::AuthorizerAppid => "AuthorizerAppid",
        }
    }
}

impl Envelope {
    /// Parses XML or JSON, chosen by the first byte that is not white space (or a UTF-8 BOM).
    pub fn parse(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let body = body.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(body);
        match body.iter().find(|b| !b.is_ascii_whitespace()) {
            None => Err(EnvelopeError::Empty),
            Some(b'<') => Envelope::parse_xml(body),
            Some(b'{') => Envelope::parse_json(body),
            Some(_) => Err(EnvelopeError::UnknownFormat),
        }
    }

    /// Parses an XML body: the direct children of the root element.
    pub fn parse_xml(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut envelope = Envelope::default();
        let mut reader = Reader::from_reader(body);
        let mut depth = 0usize;
        let mut roots = 0usize;
        // The field being read (a child of the root) and its text so far.
        let mut current: Option<(Field, String)> = None;
        loop {
            let event = reader.read_event().map_err(|e| xml_error(&e.to_string()))?;
            match event {
                Event::Start(start) => {
                    depth += 1;
                    if depth == 1 {
                        roots += 1;
                    } else if depth == 2 {
                        current =
                            Field::from_name(start.name().as_ref()).map(|f| (f, String::new()));
                    }
                }
                Event::End(_) => {
                    if depth == 2
                        && let Some((field, value)) = current.take()
                    {
                        envelope.set(field, value)?;
                    }
                    depth = depth.saturating_sub(1);
                }
                Event::Empty(empty) => {
                    if depth == 0 {
                        roots += 1;
                    } else if depth == 1
                        && let Some(field) = Field::from_name(empty.name().as_ref())
                    {
                        envelope.set(field, String::new())?;
                    }
                }
                Event::Text(text) if depth == 2 => {
                    if let Some((_, value)) = current.as_mut() {
                        let text = text
                            .xml10_content()
                            .map_err(|e| xml_error(&e.to_string()))?;
                        value.push_str(&text);
                    }
                }
                Event::Text(text) => {
                    // Only white space may stand outside the root element.
                    if depth == 0 && text.iter().any(|b| !b.is_ascii_whitespace()) {
                        return Err(xml_error("text outside the root element"));
                    }
                }
                Event::CData(cdata) if depth == 2 => {
                    if let Some((_, value)) = current.as_mut() {
                        let text = std::str::from_utf8(&cdata)
                            .map_err(|_| xml_error("CDATA is not UTF-8"))?;
                        value.push_str(text);
                    }
                }
                Event::GeneralRef(reference) => {
                    let resolved = resolve_reference(&reference)?;
                    if depth == 2 {
                        if let Some((_, value)) = current.as_mut() {
                            value.push(resolved);
                        }
                    } else if depth == 0 {
                        return Err(xml_error("text outside the root element"));
                    }
                }
                Event::DocType(_) => return Err(EnvelopeError::Doctype),
                Event::Eof => break,
                Event::CData(_) | Event::Decl(_) | Event::PI(_) | Event::Comment(_) => {}
            }
        }
        match (roots, depth) {
            (1, 0) => Ok(envelope),
            (0, _) => Err(xml_error("no root element")),
            (_, 0) => Err(xml_error("more than one root element")),
            _ => Err(xml_error("unclosed element")),
        }
    }

    /// Parses a JSON object body; values may be strings or numbers, other values are ignored.
    pub fn parse_json(body: &[u8]) -> Result<Envelope, EnvelopeError> {
        let mut de = serde_json::Deserializer::from_slice(body);
        de.deserialize_map(JsonEnvelope)
            .and_then(|envelope| de.end().map(|()| envelope))
            .map_err(|e| EnvelopeError::Json(Excerpt::new(&e.to_string(), MESSAGE_EXCERPT)))?
    }

    /// Is this an event named `name`? Event names differ in case on the wire (`SCAN`, `subscribe`),
    /// so the comparison ignores ASCII case.
    pub fn is_event(&self, name: &str) -> bool {
        self.is_msg_type("event")
            && self
                .event
                .as_deref()
                .is_some_and(|e| e.eq_ignore_ascii_case(name))
    }

    /// Is `MsgType` equal to `name`, ignoring ASCII case?
    pub fn is_msg_type(&self, name: &str) -> bool {
        self.msg_type
            .as_deref()
            .is_some_and(|t| t.eq_ignore_ascii_case(name))
    }

    fn set(&mut self, field: Field, value: String) -> Result<(), EnvelopeError> {
        let slot = match field {
            Field::ToUserName => &mut self.to_user_name,
            Field::FromUserName => &mut self.from_user_name,
            Field::CreateTime => &mut self.create_time,
            Field::MsgType => &mut self.msg_type,
            Field::Event => &mut self.event,
            Field::EventKey => &mut self.event_key,
            Field::MsgId => &mut self.msg_id,
            Field::AgentId => &mut self.agent_id,
            Field::Encrypt => &mut self.encrypt,
            Field::AppId => &mut self.app_id,
            Field::InfoType => &mut self.info_type,
            Field::AuthorizerAppid => &mut self.authorizer_appid,
        };
        // Two values for one field would let the proxy and a downstream SDK route differently.
        if slot.is_some() {
            return Err(EnvelopeError::DuplicateField(field.name()));
        }
        *slot = Some(value);
        Ok(())
    }
}

fn xml_error(message: &str) -> EnvelopeError {
    EnvelopeError::Xml(Excerpt::new(message, MESSAGE_EXCERPT))
}

fn entity_error(name: &[u8]) -> EnvelopeError {
    EnvelopeError::Entity(Excerpt::new(&String::from_utf8_lossy(name), ENTITY_EXCERPT))
}

/// Resolves `&name;` and `&#…;`; any other entity could only come from a DOCTYPE, which is refused.
pub(crate) fn resolve_reference(
    reference: &quick_xml::events::BytesRef<'_>,
) -> Result<char, EnvelopeError> {
    if reference.is_char_ref() {
        return match reference.resolve_char_ref() {
            Ok(Some(c)) => Ok(c),
            _ => Err(entity_error(reference)),
        };
    }
    let name: &[u8] = reference;
    match name {
        b"lt" => Ok('<'),
        b"gt" => Ok('>'),
        b"amp" => Ok('&'),
        b"apos" => Ok('\''),
        b"quot" => Ok('"'),
        other => Err(entity_error(other)),
    }
}

/// Drives serde_json over the top-level object without building a `Value`.
struct JsonEnvelope;

impl<'de> Visitor<'de> for JsonEnvelope {
    type Value = Result<Envelope, EnvelopeError>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut envelope = Envelope {
            format: Format::Json,
            ..Envelope::default()
        };
        while let Some(JsonKey(field)) = map.next_key()? {
            let Some(field) = field else {
                map.next_value::<IgnoredAny>()?;
                continue;
            };
            let JsonScalar(value) = map.next_value()?;
            if let Some(value) = value
                && let Err(e) = envelope.set(field, value)
            {
                // Read the rest of the object, so the error is this one and not the parser's
                // complaint about where it was left (`trailing comma`).
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                return Ok(Err(e));
            }
        }
        Ok(Ok(envelope))
    }
}

struct JsonKey(Option<Field>);

impl<'de> de::Deserialize<'de> for JsonKey {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl Visitor<'_> for KeyVisitor {
            type Value = JsonKey;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a key")
            }
            fn visit_str<E: de::Error>(self, key: &str) -> Result<JsonKey, E> {
                Ok(JsonKey(Field::from_name(key.as_bytes())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// A string or number, as text; objects, arrays, booleans and null count as absent.
struct JsonScalar(Option<String>);

impl<'de> de::Deserialize<'de> for JsonScalar {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ScalarVisitor;
        impl<'de> Visitor<'de> for ScalarVisitor {
            type Value = JsonScalar;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonScalar, E> {
                Ok(JsonScalar(Some(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<JsonScalar, E> {
                Ok(JsonScalar(Some(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonScalar, E> {
                Ok(JsonScalar(Some(v.to_string())))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonScalar, E> {
                Ok(JsonScalar(Some(v.to_string())))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonScalar, E> {
                Ok(JsonScalar(Some(v.to_string())))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<JsonScalar, E> {
                Ok(JsonScalar(None))
            }
            fn visit_unit<E: de::Error>(self) -> Result<JsonScalar, E> {
                Ok(JsonScalar(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonScalar, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(JsonScalar(None))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<JsonScalar, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(JsonScalar(None))
            }
        }
        deserializer.deserialize_any(ScalarVisitor)
    }
}

/// The four fields of an encrypted reply, or of an encrypted request built for simulation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed<'a> {
    pub encrypt: &'a str,
    pub msg_signature: &'a str,
    pub timestamp: &'a str,
    pub nonce: &'a str,
}

impl Sealed<'_> {
    /// `<xml><Encrypt>…</Encrypt><MsgSignature>…</MsgSignature><TimeStamp>…</TimeStamp><Nonce>…</Nonce></xml>`
    pub fn reply_xml(&self) -> String {
        let mut out = String::with_capacity(self.encrypt.len() + 200);
        out.push_str("<xml>");
        push_cdata_element(&mut out, "Encrypt", self.encrypt);
        push_cdata_element(&mut out, "MsgSignature", self.msg_signature);
        out.push_str("<TimeStamp>");
        push_escaped(&mut out, self.timestamp);
        out.push_str("</TimeStamp>");
        push_cdata_element(&mut out, "Nonce", self.nonce);
        out.push_str("</xml>");
        out
    }

    /// `{"Encrypt":…,"MsgSignature":…,"TimeStamp":…,"Nonce":…}`, TimeStamp as a number when it is one.
    pub fn reply_json(&self) -> String {
        let timestamp = match self.timestamp.parse::<u64>() {
            Ok(n) => serde_json::Value::from(n),
            Err(_) => serde_json::Value::from(self.timestamp),
        };
        serde_json::json!({
            "Encrypt": self.encrypt,
            "MsgSignature": self.msg_signature,
            "TimeStamp": timestamp,
            "Nonce": self.nonce,
        })
        .to_string()
    }
}

/// The answer's fields if it is an encrypted reply: XML or JSON with `Encrypt`. Parsed apart
/// from [`Envelope`], which keeps only `Encrypt`. Used by `simulate` and to re-seal a target's
/// reply for WeChat.
pub fn encrypted_reply(body: &[u8]) -> Option<Vec<(String, String)>> {
    let fields = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'<') => xml_fields(body)?,
        Some(b'{') => json_fields(body)?,
        _ => return None,
    };
    let encrypted = fields
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("Encrypt"));
    encrypted.then_some(fields)
}

/// The root's direct children and their text (CDATA or bare); `None` if the XML is malformed.
fn xml_fields(body: &[u8]) -> Option<Vec<(String, String)>> {
    let mut reader = Reader::from_reader(body);
    let mut fields: Vec<(String, String)> = Vec::new();
    let mut depth = 0usize;
    loop {
        match reader.read_event().ok()? {
            Event::Start(start) => {
                depth += 1;
                if depth == 2 {
                    let name = String::from_utf8_lossy(start.name().as_ref()).into_owned();
                    fields.push((name, String::new()));
                }
            }
            Event::End(_) => depth = depth.checked_sub(1)?,
            Event::Text(text) if depth == 2 => {
                fields.last_mut()?.1.push_str(&text.xml10_content().ok()?);
            }
            Event::CData(cdata) if depth == 2 => {
                fields
                    .last_mut()?
                    .1
                    .push_str(std::str::from_utf8(&cdata).ok()?);
            }
            Event::Eof => return Some(fields),
            _ => {}
        }
    }
}

/// Top-level string and number values of a JSON object; `None` if it is not one.
fn json_fields(body: &[u8]) -> Option<Vec<(String, String)>> {
    let map: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(body).ok()?;
    let fields = map
        .into_iter()
        .filter_map(|(key, value)| match value {
            serde_json::Value::String(s) => Some((key, s)),
            serde_json::Value::Number(n) => Some((key, n.to_string())),
            _ => None,
        })
        .collect();
    Some(fields)
}

/// The body WeChat POSTs in safe mode: `<xml><ToUserName>…</ToUserName>[<AgentID>…</AgentID>]<Encrypt>…</Encrypt></xml>`.
pub fn encrypted_request_xml(to_user_name: &str, agent_id: Option<&str>, encrypt: &str) -> String {
    let mut out = String::with_capacity(encrypt.len() + 128);
    out.push_str("<xml>");
    push_cdata_element(&mut out, "ToUserName", to_user_name);
    if let Some(agent_id) = agent_id {
        push_cdata_element(&mut out, "AgentID", agent_id);
    }
    push_cdata_element(&mut out, "Encrypt", encrypt);
    out.push_str("</xml>");
    out
}

/// The body a mini program in JSON format receives in safe mode: `{"ToUserName":…,"Encrypt":…}`.
pub fn encrypted_request_json(to_user_name: &str, encrypt: &str) -> String {
    serde_json::json!({ "ToUserName": to_user_name, "Encrypt": encrypt }).to_string()
}

/// Appends `<name><![CDATA[value]]></name>`, as WeChat writes string fields.
pub fn push_cdata_element(out: &mut String, name: &str, value: &str) {
    let _ = write!(out, "<{name}><![CDATA[");
    // "]]>" cannot appear inside CDATA: close the section and reopen it between "]]" and ">".
    out.push_str(&value.replace("]]>", "]]]]><![CDATA[>"));
    let _ = write!(out, "]]></{name}>");
}

fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cdata_and_bare_text_and_entities() {
        let body = br#"<xml><ToUserName><![CDATA[gh_1]]></ToUserName><CreateTime>1348831860</CreateTime><MsgType>te<![CDATA[xt]]></MsgType><EventKey>a&amp;b&#x4E2D;</EventKey><MsgId>1234567890123456</MsgId></xml>"#;
        let env = Envelope::parse(body).unwrap();
        assert_eq!(env.to_user_name.as_deref(), Some("gh_1"));
        assert_eq!(env.create_time.as_deref(), Some("1348831860"));
        assert_eq!(env.msg_type.as_deref(), Some("text"));
        assert_eq!(env.event_key.as_deref(), Some("a&b中"));
        assert_eq!(env.msg_id.as_deref(), Some("1234567890123456"));
    }

    #[test]
    fn nested_elements_are_not_fields() {
        let body = b"<xml><ScanCodeInfo><MsgType>x</MsgType></ScanCodeInfo><MsgType>event</MsgType><Event><![CDATA[scancode_push]]></Event></xml>";
        let env = Envelope::parse(body).unwrap();
        assert_eq!(env.msg_type.as_deref(), Some("event"));
        assert!(env.is_event("SCANCODE_PUSH"));
    }

    #[test]
    fn jobfinish_msg_id_spelling() {
        let env = Envelope::parse(b"<xml><MsgType>event</MsgType><Event>MASSSENDJOBFINISH</Event><MsgID>1988</MsgID></xml>").unwrap();
        assert_eq!(env.msg_id.as_deref(), Some("1988"));
    }

    #[test]
    fn refuses_doctype_and_external_entities() {
        let xxe = br#"<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]><xml><Content>&xxe;</Content></xml>"#;
        assert_eq!(Envelope::parse(xxe), Err(EnvelopeError::Doctype));
        let undeclared = b"<xml><MsgType>&xxe;</MsgType></xml>";
        assert_eq!(
            Envelope::parse(undeclared).map_err(|e| e.to_string()),
            Err("unknown XML entity &xxe;".into())
        );
    }

    #[test]
    fn errors_quote_the_body_only_as_a_short_escaped_excerpt() {
        let forged = "2026-01-01T00:00:00.000000Z ERROR FORGED log line account=\"admin\";";
        let body = format!("<xml><a>&x\n{forged}</a></xml>");
        let error = Envelope::parse(body.as_bytes()).unwrap_err().to_string();
        assert_eq!(error, "unknown XML entity &x\\n2026-01-01T00:00:00.00…;");
        let long_name = format!("<xml><{}\n></b></xml>", "a".repeat(500));
        let error = Envelope::parse(long_name.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            error.chars().count() < 120 && !error.contains('\n'),
            "{error}"
        );
        let json = format!("{{\"a\":\"{}\u{1b}", "b".repeat(500));
        let error = Envelope::parse(json.as_bytes()).unwrap_err().to_string();
        assert!(
            error.chars().count() < 120 && !error.contains('\u{1b}'),
            "{error}"
        );
    }

    #[test]
    fn malformed_xml_is_an_error() {
        for body in [
            &b"<xml><MsgType>text</xml>"[..],
            b"<xml>",
            b"<xml></xml><xml></xml>",
            b"<xml></xml>junk",
            b"<a></b>",
        ] {
            assert!(
                Envelope::parse(body).is_err(),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert_eq!(Envelope::parse(b"  "), Err(EnvelopeError::Empty));
        assert_eq!(
            Envelope::parse(b"success"),
            Err(EnvelopeError::UnknownFormat)
        );
    }

    #[test]
    fn duplicate_fields_are_refused() {
        let body = b"<xml><MsgType>text</MsgType><MsgType>event</MsgType></xml>";
        assert_eq!(
            Envelope::parse(body),
            Err(EnvelopeError::DuplicateField("MsgType"))
        );
        let json = br#"{"MsgType":"text","msgtype":"event"}"#;
        assert_eq!(
            Envelope::parse(json),
            Err(EnvelopeError::DuplicateField("MsgType"))
        );
        // With more keys after the duplicate: still the duplicate, not `trailing comma`.
        let json = br#"{"MsgType":"text","MsgType":"event","Content":{"a":[1]},"MsgId":1}"#;
        assert_eq!(
            Envelope::parse(json),
            Err(EnvelopeError::DuplicateField("MsgType"))
        );
    }

    #[test]
    fn json_numbers_strings_and_nested_values() {
        let body = br#"{"ToUserName":"gh_97417a04a28d","FromUserName":"o9AgO5","CreateTime":1714037059,"MsgType":"event","Event":"debug_demo","List":[{"a":1}],"MsgId":23456789012345678,"flag":true}"#;
        let env = Envelope::parse(body).unwrap();
        assert_eq!(env.format, Format::Json);
        assert_eq!(env.create_time.as_deref(), Some("1714037059"));
        assert_eq!(env.msg_id.as_deref(), Some("23456789012345678"));
        assert!(env.is_event("DEBUG_DEMO"));
        let wecom = br#"{"tousername":"ww1","encrypt":"abc","agentid":1000002}"#;
        let env = Envelope::parse(wecom).unwrap();
        assert_eq!(
            (
                env.to_user_name.as_deref(),
                env.encrypt.as_deref(),
                env.agent_id.as_deref()
            ),
            (Some("ww1"), Some("abc"), Some("1000002"))
        );
        assert!(Envelope::parse(b"{\"a\":1} x").is_err());
        assert!(Envelope::parse(b"[1]").is_err());
    }

    #[test]
    fn built_envelopes_parse_back() {
        let sealed = Sealed {
            encrypt: "ab+/=",
            msg_signature: "sig",
            timestamp: "1713424427",
            nonce: "n]]>x",
        };
        let xml = sealed.reply_xml();
        let parsed = Envelope::parse(xml.as_bytes()).unwrap();
        assert_eq!(parsed.encrypt.as_deref(), Some("ab+/="));
        let json: serde_json::Value = serde_json::from_str(&sealed.reply_json()).unwrap();
        assert_eq!(json["TimeStamp"], 1713424427);
        assert_eq!(json["Nonce"], "n]]>x");
        let req = encrypted_request_xml("ww1", Some("1000002"), "abc");
        let env = Envelope::parse(req.as_bytes()).unwrap();
        assert_eq!(
            (env.agent_id.as_deref(), env.encrypt.as_deref()),
            (Some("1000002"), Some("abc"))
        );
    }
}

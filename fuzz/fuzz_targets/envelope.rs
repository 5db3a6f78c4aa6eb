//! `Envelope::parse` (and the XML and JSON parsers directly) on arbitrary bytes: never panics,
//! `parse` answers what the parser it picks answers, and what it accepts can be keyed for dedupe.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat_fanout::wechat::{Envelope, Format, dedupe_key};

fuzz_target!(|data: &[u8]| {
    let parsed = Envelope::parse(data);
    let _ = Envelope::parse_xml(data);
    let _ = Envelope::parse_json(data);
    if let Ok(envelope) = &parsed {
        let stripped = data.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(data);
        let direct = match envelope.format {
            Format::Xml => Envelope::parse_xml(stripped),
            Format::Json => Envelope::parse_json(stripped),
        };
        assert_eq!(direct.as_ref(), Ok(envelope));
        let _ = envelope.is_event("subscribe");
        let _ = dedupe_key("fuzz", envelope, data);
    }
});

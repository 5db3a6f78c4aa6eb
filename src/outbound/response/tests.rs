//! Tests of `response`: answers read from bytes however they arrive.

use super::*;
use proptest::prelude::*;

/// [`read_all`] with the stream cut at `cuts`, each taken modulo its length.
fn decode_all(stream: &[u8], cuts: &[usize]) -> Result<Vec<(Response, bool)>, Malformed> {
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (stream.len() + 1)).collect();
    ends.sort_unstable();
    read_all(stream, &ends)
}

fn answer(status: u16, content_type: Option<&str>, body: &[u8]) -> Response {
    Response {
        status,
        retry_after: None,
        content_type: content_type.map(str::to_owned),
        body: Bytes::copy_from_slice(body),
        whole: true,
    }
}

const MIXED: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n\
    HTTP/1.1 200 OK\r\nContent-Type: text/xml\r\ncontent-length: 7\r\n\r\n<xml/>\n\
    HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4;ext=1\r\nsucc\r\n3\r\ness\r\n0\r\nX-Trailer: t\r\n\r\n\
    HTTP/1.1 204 No Content\r\n\r\n\
    HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n\
    HTTP/1.1 304 Not Modified\r\nContent-Length: 99\r\n\r\n";

fn mixed() -> Vec<(Response, bool)> {
    let mut busy = answer(503, None, b"");
    busy.retry_after = Some("7".into());
    vec![
        (answer(200, Some("text/xml"), b"<xml/>\n"), false),
        (answer(200, None, b"success"), false),
        (answer(204, None, b""), false),
        (busy, false),
        (answer(304, None, b""), false),
    ]
}

#[test]
fn answers_back_to_back_are_read_in_order_with_every_framing() {
    assert_eq!(decode_all(MIXED, &[]).unwrap(), mixed());
}

#[test]
fn answers_read_in_pieces_of_any_size_are_the_same() {
    for cut in 1..MIXED.len() {
        assert_eq!(decode_all(MIXED, &[cut]).unwrap(), mixed(), "cut at {cut}");
    }
    let every_byte: Vec<usize> = (1..MIXED.len()).collect();
    assert_eq!(decode_all(MIXED, &every_byte).unwrap(), mixed());
}

#[test]
fn a_body_without_length_runs_until_the_close_and_closes() {
    let stream = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\nto the end";
    assert_eq!(
        decode_all(stream, &[40]).unwrap(),
        vec![
            (answer(200, None, b"ok"), false),
            (answer(200, None, b"to the end"), true)
        ]
    );
    // A coding other than chunked last: the body also runs to the close.
    let gzip = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nzz";
    assert_eq!(
        decode_all(gzip, &[]).unwrap(),
        vec![(answer(200, None, b"zz"), true)]
    );
}

#[test]
fn connection_close_and_http_1_0_end_the_connection_after_the_answer() {
    let cases: [(&[u8], bool); 3] = [
        (
            b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\nContent-Length: 0\r\n\r\n",
            true,
        ),
        (b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", true),
        (
            b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n",
            false,
        ),
    ];
    for (stream, closes) in cases {
        assert_eq!(
            decode_all(stream, &[]).unwrap(),
            vec![(answer(200, None, b""), closes)],
            "{}",
            String::from_utf8_lossy(stream)
        );
    }
}

#[test]
fn a_body_over_the_cap_is_not_whole_and_the_next_answer_still_read() {
    let mut stream = Vec::new();
    let over = vec![b'a'; MAX_RESPONSE_BYTES + 1];
    let at_the_cap = vec![b'b'; MAX_RESPONSE_BYTES];
    stream.extend(on_the_wire(200, &over, None));
    stream.extend(on_the_wire(200, &over, Some(&[70_000, 500_000])));
    stream.extend(on_the_wire(200, &at_the_cap, Some(&[1000])));
    stream.extend_from_slice(b"HTTP/1.1 202 Accepted\r\nContent-Length: 1\r\n\r\nb");
    // And one that runs to the close.
    stream.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
    stream.extend_from_slice(&over);
    let cut = Response {
        body: Bytes::new(),
        whole: false,
        ..answer(200, None, b"")
    };
    let expected = vec![
        (cut.clone(), false),
        (cut.clone(), false),
        (answer(200, None, &at_the_cap), false),
        (answer(202, None, b"b"), false),
        (cut, true),
    ];
    // Status, body length, whole, and whether the connection closes: a failure then does
    // not print megabytes.
    let summary = |answers: &[(Response, bool)]| -> Vec<(u16, usize, bool, bool)> {
        (answers.iter())
            .map(|(a, close)| (a.status, a.body.len(), a.whole, *close))
            .collect()
    };
    for cuts in [&[][..], &[1000, 70_000, 900_000, 1_100_000, 2_200_000]] {
        let answers = decode_all(&stream, cuts).unwrap();
        assert_eq!(summary(&answers), summary(&expected), "cut at {cuts:?}");
        assert!(answers == expected, "cut at {cuts:?}");
    }
}

#[test]
fn what_is_not_http_is_refused_with_a_reason() {
    let cases: &[(&[u8], &str)] = &[
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.1 answer"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
            "an invalid Content-Length",
        ),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            "two different Content-Lengths",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            "an invalid chunk size",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nabc",
            "a chunk not ended by CRLF",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
            "101 Switching Protocols",
        ),
    ];
    for (stream, reason) in cases {
        let error = decode_all(stream, &[]).unwrap_err().to_string();
        assert!(error.contains(reason), "{error}");
    }
    let mut endless = b"HTTP/1.1 200 OK\r\n".to_vec();
    endless.resize(MAX_HEAD_BYTES + 100, b'a');
    let error = decode_all(&endless, &[]).unwrap_err().to_string();
    assert!(error.contains("head is too large"), "{error}");
    // Refused for its length whether it came whole or in pieces.
    let mut long = b"HTTP/1.1 200 OK\r\nX-Long: ".to_vec();
    long.resize(MAX_HEAD_BYTES + 100, b'a');
    long.extend_from_slice(b"\r\nContent-Length: 0\r\n\r\n");
    for cuts in [&[][..], &[1000, 40_000]] {
        let error = decode_all(&long, cuts).unwrap_err().to_string();
        assert!(error.contains("head is too large"), "{error}");
    }
}

/// One answer on the wire, framed by length or in chunks of the given sizes.
fn on_the_wire(status: u16, body: &[u8], chunks: Option<&[usize]>) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status} X\r\n").into_bytes();
    match chunks {
        None => {
            out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
            out.extend_from_slice(body);
        }
        Some(sizes) => {
            out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n");
            let mut rest = body;
            for size in sizes
                .iter()
                .map(|s| s % (rest.len() + 1))
                .chain([body.len()])
            {
                let size = size.min(rest.len());
                if size == 0 {
                    continue;
                }
                out.extend_from_slice(format!("{size:x}\r\n").as_bytes());
                out.extend_from_slice(&rest[..size]);
                out.extend_from_slice(b"\r\n");
                rest = &rest[size..];
            }
            out.extend_from_slice(b"0\r\n\r\n");
        }
    }
    out
}

proptest! {
    #[test]
    fn bytes_from_the_network_never_panic(
        stream in proptest::collection::vec(any::<u8>(), 0..600),
        cuts in proptest::collection::vec(any::<usize>(), 0..6),
    ) {
        let _ = decode_all(&stream, &cuts);
    }

    #[test]
    fn the_pieces_bytes_come_in_never_change_what_is_read(
        stream in proptest::collection::vec(
            prop_oneof![
                Just(b"HTTP/1.1 200 OK\r\n".to_vec()),
                Just(b"Content-Length: 3\r\n".to_vec()),
                Just(b"Transfer-Encoding: chunked\r\n".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"3;x\r\nabc\r\n0\r\n".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..8),
            ],
            0..20,
        ).prop_map(|parts| parts.concat()),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        prop_assert_eq!(decode_all(&stream, &cuts), decode_all(&stream, &[]));
    }

    #[test]
    fn any_answers_cut_anywhere_come_out_whole(
        answers in proptest::collection::vec(
            (200u16..600, proptest::collection::vec(any::<u8>(), 0..300),
             proptest::option::of(proptest::collection::vec(any::<usize>(), 0..4))),
            1..5),
        cuts in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for (status, body, chunks) in &answers {
            // 204 and 304 have no body whatever the head says.
            let (body, chunks): (&[u8], _) = match status {
                204 | 304 => (b"", None),
                _ => (body, chunks.as_deref()),
            };
            stream.extend(on_the_wire(*status, body, chunks));
            expected.push((answer(*status, None, body), false));
        }
        prop_assert_eq!(decode_all(&stream, &cuts).unwrap(), expected);
    }
}

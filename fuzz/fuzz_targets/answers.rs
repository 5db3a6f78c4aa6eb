//! `downstream::answer::Decoder` on arbitrary bytes from a target, fed whole and in pieces cut
//! where the input says: never panics, and the pieces never change the answers read, whether
//! the connection closes after them, nor the first error. Layout: one byte `n` (cuts, mod 8),
//! `n` little-endian `u16` cut positions, then the bytes of the connection.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use wechat_fanout::downstream::answer::{Answer, Decoder, Malformed};

/// Every answer read from `stream` fed in pieces ending at `ends`, then what the close
/// completes; or the first error.
fn read(stream: &[u8], ends: &[usize]) -> Result<Vec<(Answer, bool)>, Malformed> {
    let mut decoder = Decoder::default();
    let mut buf = BytesMut::new();
    let mut answers = Vec::new();
    let mut at = 0;
    for &end in ends.iter().chain([&stream.len()]) {
        let end = end.clamp(at, stream.len());
        buf.extend_from_slice(&stream[at..end]);
        at = end;
        while let Some(answer) = decoder.decode(&mut buf)? {
            answers.push(answer);
        }
    }
    if let Some(answer) = decoder.end_of_stream() {
        answers.push((answer, true));
    }
    Ok(answers)
}

fuzz_target!(|data: &[u8]| {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let cuts = usize::from(n % 8).min(rest.len() / 2);
    let (cut_bytes, stream) = rest.split_at(cuts * 2);
    let mut ends: Vec<usize> = cut_bytes
        .chunks_exact(2)
        .map(|c| usize::from(u16::from_le_bytes([c[0], c[1]])))
        .collect();
    ends.sort_unstable();
    assert_eq!(read(stream, &ends), read(stream, &[]));
});

//! `outbound::response::Decoder` on arbitrary bytes from a target, fed whole and in pieces cut
//! where the input says: never panics, and the pieces never change the answers read, whether
//! the connection closes after them, nor the first error. Layout: one byte `n` (cuts, mod 8),
//! `n` little-endian `u16` cut positions, then the bytes of the connection.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wechat_fanout::outbound::response::read_all;

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
    assert_eq!(read_all(stream, &ends), read_all(stream, &[]));
});

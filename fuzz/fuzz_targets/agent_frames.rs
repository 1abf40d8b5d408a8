//! The agent protocol: frames read from a byte stream the other side
//! controls (a guest's answers on the host, the host's requests in the
//! guest), delivered in reads of any size.
//!
//! Checks: every payload is within `MAX_PAYLOAD`; every message decoded
//! encodes again and, written as clean frames, reads back the same.
#![no_main]

use std::io::{self, Read};

use hearth_agent::protocol::{self, FrameReader, MAX_PAYLOAD, Request, Response};
use libfuzzer_sys::fuzz_target;
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Hands out the input in reads of the sizes its first byte picks.
struct Chunks<'a> {
    data: &'a [u8],
    size: usize,
}

impl Read for Chunks<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.data.len().min(buf.len()).min(self.size);
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, stream)) = data.split_first() else { return };
    let size = usize::from(first % 32) + 1;
    let size = if first >= 128 { size * 4096 } else { size };
    let chunks = || Chunks { data: stream, size };

    let mut frames = FrameReader::new(chunks());
    let mut payloads = 0;
    loop {
        match frames.read_frame() {
            Ok(Some(payload)) => assert!(payload.len() <= MAX_PAYLOAD),
            Ok(None) => break,
            Err(protocol::Error::TooLarge { .. }) => {}
            Err(e) => panic!("reading from memory failed: {e}"),
        }
        payloads += 1;
        assert!(payloads <= stream.len(), "the reader returns more frames than there are bytes");
    }

    round_trip::<Response>(chunks());
    round_trip::<Request>(chunks());
});

/// Reads every `T` the stream holds, then checks they come back from their
/// own encoding.
fn round_trip<T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug>(stream: Chunks<'_>) {
    let budget = stream.data.len() + 1;
    let mut reader = FrameReader::new(stream);
    let mut messages = Vec::new();
    for _ in 0..budget {
        match reader.read::<T>() {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => break,
            Err(protocol::Error::TooLarge { .. } | protocol::Error::Decode(_)) => {}
            Err(e) => panic!("reading from memory failed: {e}"),
        }
    }
    let mut clean = Vec::new();
    for message in &messages {
        clean.extend(protocol::encode(message).expect("a decoded message encodes"));
    }
    let mut again = FrameReader::new(clean.as_slice());
    for message in &messages {
        let read: T = again.read().expect("a clean frame reads").expect("every frame is there");
        assert_eq!(&read, message);
    }
    assert!(again.read::<T>().expect("a clean stream ends cleanly").is_none());
    assert_eq!(again.skipped(), 0, "nothing is skipped in a stream of clean frames");
}

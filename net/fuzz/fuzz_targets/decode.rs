//! Feeds arbitrary bytes through the v1 frame decoder and both message parsers.
//!
//! The first input byte picks the decoder's size limit (so tiny limits and the
//! default 64 KiB are both exercised); the rest is a byte stream that is split
//! into frames until the decoder needs more bytes or rejects the stream.
//! Checked properties:
//! - the decoder never panics, never claims more bytes than it was given and
//!   never returns a frame larger than its limit or smaller than the header;
//! - a frame is not complete on any strict prefix of its bytes (small frames);
//! - every frame that parses as a `Request` re-encodes to exactly its bytes and
//!   parses back to the same request;
//! - every frame that parses as a `Response` re-encodes to exactly its bytes
//!   (except texts longer than the 512-byte limit, which the encoder cuts) and
//!   parses back to the same response.

#![no_main]

use libfuzzer_sys::fuzz_target;
use redrain_net::frame::{FrameDecoder, FRAME_HEADER_BYTES};
use redrain_net::message::{Request, Response, ERROR_MESSAGE_BYTES_MAX};

fuzz_target!(|data: &[u8]| {
    let Some((&pick, stream)) = data.split_first() else { return };
    let limit = if pick == 0xff { 64 * 1024 } else { u32::from(pick) * 16 };
    let decoder = FrameDecoder::new(limit);
    let mut rest = stream;
    while let Ok(Some((frame, used))) = decoder.decode(rest) {
        assert!(used >= FRAME_HEADER_BYTES && used <= rest.len());
        assert!(used as u64 <= u64::from(decoder.frame_bytes_max()));
        assert_eq!(frame.header.flags, 0);
        assert_eq!(frame.body.len(), used - FRAME_HEADER_BYTES);
        let raw = &rest[..used];
        if used <= 512 {
            for cut in 0..used {
                assert!(matches!(decoder.decode(&raw[..cut]), Ok(None)), "frame complete after {cut} of {used} bytes");
            }
        }

        if let Ok(req) = Request::parse(&frame) {
            let mut out = Vec::new();
            req.encode(frame.header.request_id, &mut out);
            assert_eq!(out, raw, "request {req:?} does not re-encode to its bytes");
            let (again, n) = decoder.decode(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            assert_eq!(Request::parse(&again).unwrap(), req);
        }

        if let Ok(resp) = Response::parse(&frame) {
            let over_long_text = match resp {
                Response::Error { message, .. } | Response::Closing { message, .. } => {
                    message.len() > ERROR_MESSAGE_BYTES_MAX
                }
                _ => false,
            };
            let mut out = Vec::new();
            resp.encode(frame.header.request_id, &mut out);
            if !over_long_text {
                assert_eq!(out, raw, "response {resp:?} does not re-encode to its bytes");
            }
            let (again, n) = FrameDecoder::new(u32::MAX).decode(&out).unwrap().unwrap();
            assert_eq!(n, out.len());
            let reparsed = Response::parse(&again).unwrap();
            if !over_long_text {
                assert_eq!(reparsed, resp);
            }
        }

        rest = &rest[used..];
    }
});

//! The game server's binary client-message decoder (one WebSocket binary frame). Anything it
//! accepts must survive a round trip through the encoder unchanged.
#![no_main]
use bytes::BytesMut;
use game_server::protocol::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The server-side decoder of what clients send, and the bots' decoder of what servers send.
    let _ = Encoding::Binary.decode_server(data);
    if let Ok(msg) = Encoding::Binary.decode_client(data) {
        let mut out = BytesMut::new();
        Encoding::Binary.encode_client(&msg, &mut out);
        assert_eq!(Encoding::Binary.decode_client(&out), Ok(msg));
    }
});

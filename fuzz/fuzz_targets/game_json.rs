//! The game server's JSON client-message decoder (one WebSocket text frame). Anything it accepts
//! must survive a round trip through the encoder unchanged.
#![no_main]
use bytes::BytesMut;
use game_server::protocol::Encoding;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = Encoding::Json.decode_server(data);
    if let Ok(msg) = Encoding::Json.decode_client(data) {
        let mut out = BytesMut::new();
        Encoding::Json.encode_client(&msg, &mut out);
        assert_eq!(Encoding::Json.decode_client(&out), Ok(msg));
    }
});

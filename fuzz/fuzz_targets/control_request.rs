#![no_main]
//! The control socket's request parser (vdisk-live, format-spec/control.md): any line gets a
//! request or an error with a code, never a panic; a request that parses survives its own
//! encoding unchanged.

use libfuzzer_sys::fuzz_target;
use vdisk_live::control::protocol::{parse_request, response};

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok((req, id)) => {
            let line = serde_json::to_vec(&req).expect("a request encodes");
            let (again, _) = parse_request(&line).expect("an encoded request parses");
            assert_eq!(again, req);
            let _ = response(Err(vdisk_live::control::OpError::bad_request("x")), id);
        }
        Err((e, id)) => {
            assert!(!e.message.is_empty());
            let v = response(Err(e), id);
            assert_eq!(v["ok"], false);
        }
    }
});

//! The tracefs `format` parser (tracepoint field offsets the eBPF programs are patched with).
#![no_main]
use agent::sources::kernel::tracefs::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(f) = Format::parse(text) {
        assert!(!f.fields.is_empty());
        for field in &f.fields {
            // Every parsed field can be looked up by the name the parser gave it.
            assert!(f.field(&field.name).is_some());
            let _ = f.require("fuzz", &field.name);
        }
    }
});

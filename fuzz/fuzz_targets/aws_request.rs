#![no_main]

#[path = "../entry_points.rs"]
#[allow(dead_code)]
mod entry_points;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry_points::aws_request(data));

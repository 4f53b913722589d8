#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Verification speed: a key policy near KMS's 32 KB limit, with many statements, verified
//! for each profile (parse, grammar checks, every required request and the probes).
//! Run: `cargo bench --bench verify`.

#[path = "fixtures/verify_inputs.rs"]
mod verify_inputs;

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use inspector_keyd::verify::{self, Profile};

fn bench(c: &mut Criterion) {
    let key = verify_inputs::key();
    for profile in Profile::ALL {
        let documents = verify_inputs::documents(profile);
        let input = verify_inputs::input(profile, &key, &documents);
        let report = verify::verify(&input);
        assert!(report.passed, "{profile:?}: {:#?}", report.findings);
        let size = documents.0.len() + documents.1.iter().map(String::len).sum::<usize>();
        c.bench_function(
            &format!("verify {} ({size} bytes of policy)", profile.name()),
            |b| b.iter(|| verify::verify(black_box(&input))),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

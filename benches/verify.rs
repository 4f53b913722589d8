#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

//! Verification speed: a key policy near KMS's 32 KB limit, with many statements, verified
//! for each profile (parse, grammar checks, every required request and the probes, the
//! access summary). Then the access summary alone (`verify::access::summarize`) of the
//! seed's policies, Amazon Q's key policy and two ~32 KB key policies, and the access diff
//! of Amazon Q's policy against a mutated copy.
//! Run: `cargo bench --bench verify` (`-- access` for the access summary alone).

#[path = "fixtures/verify_inputs.rs"]
mod verify_inputs;

#[path = "fixtures/access_inputs.rs"]
mod access_inputs;

use std::{
    hint::black_box,
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use inspector_keyd::verify::{self, Profile, access};

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

/// What a summary holds, printed once from the setup: a figure means little if the
/// analysis gave up on some statements.
fn describe(name: &str, summary: &access::AccessSummary) {
    eprintln!(
        "access summary of {name}: {} entries, {} statements ANALYSIS_INCOMPLETE",
        summary.entries.len(),
        summary.incomplete.len()
    );
    for gap in &summary.incomplete {
        eprintln!(
            "  incomplete: {} (line {}): {}",
            gap.sid.as_deref().unwrap_or("(no Sid)"),
            gap.location.line,
            gap.reason
        );
    }
}

/// This thread's CPU time so far (Linux's `/proc/thread-self/schedstat`), so a figure can be
/// read apart from what other processes on the machine take; `None` elsewhere.
fn thread_cpu() -> Option<Duration> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        text.split_whitespace().next()?.parse().ok()?,
    ))
}

/// The mean wall and CPU time of `runs` calls of `f`, printed once from the setup (CPU time
/// is counted in scheduler ticks, so only a total over many calls is exact).
fn cpu_per_call(name: &str, runs: u32, mut f: impl FnMut()) {
    let (started, started_cpu) = (Instant::now(), thread_cpu());
    for _ in 0..runs {
        f();
    }
    let wall = started.elapsed() / runs;
    let cpu = thread_cpu()
        .zip(started_cpu)
        .map(|(end, start)| (end - start) / runs);
    eprintln!(
        "{name}: mean of {runs} calls {wall:?} wall, {} CPU",
        cpu.map_or("unknown".to_owned(), |c| format!("{c:?}"))
    );
}

fn access_summary(c: &mut Criterion) {
    let key_arn = access_inputs::key_arn();
    let mut group = c.benchmark_group("access");
    let small = [access_inputs::seed(), access_inputs::amazon_q()];
    let large = [
        access_inputs::large_statements(),
        access_inputs::large_principals(),
    ];
    for (i, case) in small.iter().chain(&large).enumerate() {
        let subject = case.subject(&key_arn);
        let summary = access::summarize(&case.key_policy, &subject);
        describe(case.name, &summary);
        let runs = if i < small.len() { 200 } else { 10 };
        cpu_per_call(&format!("summarize {}", case.name), runs, || {
            black_box(access::summarize(&case.key_policy, &subject));
        });
        if i == small.len() {
            // The large policies take long enough a call that criterion's fewest samples
            // are plenty.
            group.sample_size(10);
        }
        group.bench_function(
            format!("summarize {} ({} bytes of policy)", case.name, case.bytes),
            |b| b.iter(|| access::summarize(black_box(&case.key_policy), black_box(&subject))),
        );
    }

    let q = &small[1];
    let mutated = access_inputs::amazon_q_mutated();
    let subject = q.subject(&key_arn);
    let diff = access::diff(&q.key_policy, &mutated, &subject);
    eprintln!(
        "access diff of amazon-q-lambda against its mutated copy: {} new, {} removed, {} incomplete",
        diff.new_access.len(),
        diff.removed_access.len(),
        diff.incomplete.len()
    );
    assert!(!diff.new_access.is_empty() && !diff.removed_access.is_empty());
    cpu_per_call("diff amazon-q-lambda against a mutated copy", 200, || {
        black_box(access::diff(&q.key_policy, &mutated, &subject));
    });
    group.sample_size(100);
    group.bench_function("diff amazon-q-lambda against a mutated copy", |b| {
        b.iter(|| access::diff(black_box(&q.key_policy), black_box(&mutated), &subject))
    });
    group.finish();
}

criterion_group!(benches, bench, access_summary);
criterion_main!(benches);

//! Runtime hot paths on the host backend: lease + release, current-lane lookup,
//! event record + query. Run: `cargo bench -p lanes --bench runtime`.

use criterion::{criterion_group, criterion_main, Criterion};
use lanes::{Device, DeviceConfig, Policy, Wait};

fn bench(c: &mut Criterion) {
    let exclusive = Device::cpu(DeviceConfig {
        lanes: 32,
        policy: Policy::Exclusive { wait: Wait::NoWait },
        ..Default::default()
    })
    .expect("cpu device");
    // Create the lanes once so the bench measures leasing, not thread spawning.
    let all: Vec<_> = (0..32).map(|_| exclusive.lease().expect("lease")).collect();
    drop(all);
    c.bench_function("lease+release (exclusive, uncontended)", |b| {
        b.iter(|| drop(std::hint::black_box(exclusive.lease().expect("lease"))))
    });

    let shared = Device::cpu(DeviceConfig {
        lanes: 32,
        policy: Policy::Shared,
        ..Default::default()
    })
    .expect("cpu device");
    let all: Vec<_> = (0..32).map(|_| shared.lease().expect("lease")).collect();
    drop(all);
    c.bench_function("lease+release (shared)", |b| {
        b.iter(|| drop(std::hint::black_box(shared.lease().expect("lease"))))
    });

    let _bound = exclusive.current_lane().expect("bind");
    c.bench_function("current-lane lookup (bound)", |b| {
        b.iter(|| std::hint::black_box(exclusive.current_lane().expect("current")))
    });

    let lane = exclusive.lease().expect("lease");
    c.bench_function("event record+query (host backend)", |b| {
        b.iter(|| {
            let ev = lane.record().expect("record");
            std::hint::black_box(ev.query().expect("query"))
        })
    });
    c.bench_function("event record+synchronize (host backend)", |b| {
        b.iter(|| lane.record().expect("record").synchronize().expect("sync"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);

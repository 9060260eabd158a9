//! What keeping a value in secret pages costs (src/secret/pages.rs): one `SecretBytes` made
//! from a token-sized `Vec` and dropped, against the same bytes in a `Zeroizing<Vec<u8>>` (what
//! `SecretBytes` was before its pages), under the daemon's zeroizing allocator; one page-sized
//! and one large (64 KiB, its own mapping) value too. Each GetSecret answer makes two such
//! values (the value and its response frame), so twice the difference is its cost per call.
//!
//! Run: `cargo bench --bench secret_pages`.

use std::hint::black_box;

use buildbroker::secret::SecretBytes;
use criterion::{Criterion, criterion_group, criterion_main};
use zeroize::Zeroizing;

#[global_allocator]
static ALLOCATOR: buildbroker::zeroize_alloc::ZeroizeOnFree =
    buildbroker::zeroize_alloc::ZeroizeOnFree;

fn bench(c: &mut Criterion) {
    for (label, size) in [
        ("token 40 B", 40),
        ("frame 1 KiB", 1029),
        ("large 64 KiB", 65536),
    ] {
        let bytes = vec![0x5au8; size];
        let mut group = c.benchmark_group(label);
        group.bench_function("SecretBytes (secret pages)", |b| {
            b.iter(|| {
                let v = SecretBytes::new(black_box(bytes.clone()));
                black_box(v.expose().len())
            })
        });
        group.bench_function("Zeroizing<Vec<u8>> (heap)", |b| {
            b.iter(|| {
                let v = Zeroizing::new(black_box(bytes.clone()));
                black_box(v.len())
            })
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);

//! Replays every committed fuzz corpus file (`fuzz/corpus/<target>/`) through its target body
//! on stable Rust, so CI re-checks every input a fuzzer kept, and each target has a corpus.

use std::path::{Path, PathBuf};

use outpost_tests::fuzz::{TARGETS, seeds};

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

#[test]
fn fuzz_corpora_replay_without_a_panic() {
    for (name, body) in TARGETS {
        let dir = corpus_dir(name);
        let files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("corpus {} missing: {e}", dir.display()))
            .map(|e| e.expect("dir entry").path())
            .collect();
        assert!(
            files.len() >= 10,
            "corpus {} holds {} files: run the fuzzer (README \"Fuzzing\") and commit what it keeps",
            dir.display(),
            files.len()
        );
        for f in files {
            let data = std::fs::read(&f).expect("corpus file");
            body(&data);
        }
    }
}

#[test]
fn fuzz_seeds_are_accepted_by_their_targets() {
    for (name, body) in TARGETS {
        let s = seeds(name);
        assert!(!s.is_empty(), "no seeds for {name}");
        for input in s {
            body(&input);
        }
    }
}

/// Writes the seeds into the corpus directories (run by hand before a first fuzzing session:
/// `cargo test -p outpost-tests --test fuzz_corpora -- --ignored`).
#[test]
#[ignore]
fn write_fuzz_seeds() {
    for (name, _) in TARGETS {
        let dir = corpus_dir(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        for (i, input) in seeds(name).into_iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), input).expect("write seed");
        }
    }
}

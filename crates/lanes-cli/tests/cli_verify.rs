//! `lanes version` and `lanes verify`: provenance, refusal of a stale binary,
//! a clean round recorded in the ledger, and the streak of clean rounds.

mod cli_support;

use std::io::Write;

use cli_support::{copy_sources, json_object, lanes, model_dir, run, workspace_root};

#[test]
fn version_verbose_prints_the_provenance() {
    let (code, out, _) = run(&mut lanes(&["version", "--verbose"]));
    assert_eq!(code, 0);
    assert!(out.starts_with("lanes "), "{out}");
    for label in [
        "source hash:",
        "git commit:",
        "rustc:",
        "profile:",
        "features:",
        "built:",
    ] {
        assert!(out.contains(label), "{label} missing: {out}");
    }
    let (code, out, _) = run(&mut lanes(&["version", "--json"]));
    assert_eq!(code, 0);
    let v = json_object(&out);
    let hash = v["source_hash"].as_str().unwrap();
    assert_eq!(hash.len(), 64);
    assert!(out.contains(hash));
}

#[test]
fn a_stale_binary_is_refused_with_exit_code_3() {
    let tree = tempfile::tempdir().unwrap();
    copy_sources(&workspace_root(), tree.path());
    let main = tree.path().join("crates/lanes-cli/src/main.rs");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&main)
        .unwrap();
    writeln!(f, "// a change made after the build").unwrap();
    drop(f);
    let ledger = tree.path().join("ledger.jsonl");
    let (code, out, err) = run(lanes(&["verify", "--device", "cpu"])
        .arg("--source")
        .arg(tree.path())
        .arg("--ledger")
        .arg(&ledger));
    assert_eq!(code, 3, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("refused"), "{err}");
    assert!(
        err.contains("binary source hash:") && err.contains("tree source hash:"),
        "{err}"
    );
    assert!(err.contains("cargo build --release -p lanes-cli"), "{err}");
    let hashes: Vec<&str> = err
        .lines()
        .filter(|l| l.contains("source hash:"))
        .map(|l| l.split_whitespace().nth(3).unwrap())
        .collect();
    assert_eq!(hashes.len(), 2);
    assert_ne!(hashes[0], hashes[1]);
    assert!(
        !ledger.exists(),
        "a refused round writes nothing to the ledger"
    );
}

#[test]
fn a_fresh_binary_runs_a_round_and_records_it() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.jsonl");
    let round = |json: bool| {
        let mut cmd = lanes(&[
            "verify",
            "--device",
            "cpu",
            "--threads",
            "1,2",
            "--requests",
            "2",
            "--distinct",
            "2",
            "--max-batch",
            "2",
            "--max-len",
            "8",
        ]);
        cmd.arg("--model")
            .arg(&model)
            .arg("--source")
            .arg(workspace_root())
            .arg("--ledger")
            .arg(&ledger);
        if json {
            cmd.arg("--json");
        }
        run(&mut cmd)
    };
    let (code, out, err) = round(true);
    assert_eq!(
        code, 0,
        "stdout: {out}\nstderr: {err}\n(exit 3 here means the sources changed after cargo built the binary, \
         e.g. an edit made while the tests ran)"
    );
    let rec = json_object(&out);
    assert_eq!(rec["clean"], true);
    assert_eq!(rec["device"], "cpu");
    assert_eq!(rec["runs"].as_array().unwrap().len(), 2);
    assert_eq!(rec["runs"][1]["threads"], 2);
    assert!(rec["runs"][0]["checks"].as_array().unwrap().len() >= 6);
    let (code, out, _) = round(false);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("2 consecutive clean rounds"), "{out}");
    let text = std::fs::read_to_string(&ledger).unwrap();
    assert_eq!(text.lines().count(), 2);
    assert!(text.ends_with('\n'));
    let (code, out, _) = run(lanes(&["verify", "--status", "--json"])
        .arg("--source")
        .arg(workspace_root())
        .arg("--ledger")
        .arg(&ledger));
    assert_eq!(code, 0);
    let s = json_object(&out);
    assert_eq!(s["count"], 2);
    assert_eq!(s["binary_stale"], false);
}

#[test]
fn the_streak_resets_on_a_new_source_hash() {
    // A tiny stand-in tree: --status only hashes it and reads the ledger.
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("crates/x/src")).unwrap();
    std::fs::write(tree.path().join("crates/x/src/lib.rs"), "pub fn f() {}\n").unwrap();
    std::fs::write(tree.path().join("Cargo.toml"), "[workspace]\n").unwrap();
    let ledger = tree.path().join("ledger.jsonl");
    let status = || {
        let (code, out, err) = run(lanes(&["verify", "--status", "--json"])
            .arg("--source")
            .arg(tree.path())
            .arg("--ledger")
            .arg(&ledger));
        assert_eq!(code, 0, "{err}");
        (json_object(&out), err)
    };
    let (s, _) = status();
    assert_eq!(s["count"], 0);
    let hash = s["source_hash"].as_str().unwrap().to_string();
    let line = |h: &str, clean: bool| {
        serde_json::json!({"source_hash": h, "clean": clean, "time": "t"}).to_string()
    };
    let lines = [
        line("0ther", true),
        line(&hash, false),
        line(&hash, true),
        line(&hash, true),
        line(&hash, true),
    ];
    std::fs::write(&ledger, lines.join("\n") + "\n").unwrap();
    assert_eq!(status().0["count"], 3);

    // The sources change: the old rounds no longer count.
    std::fs::write(
        tree.path().join("crates/x/src/lib.rs"),
        "pub fn f() { /* changed */ }\n",
    )
    .unwrap();
    let (s, _) = status();
    assert_eq!(s["count"], 0);
    assert_ne!(s["source_hash"].as_str().unwrap(), hash);
    let new_hash = s["source_hash"].as_str().unwrap().to_string();

    // A round of the new hash starts a new streak; then an old-hash round ends it.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&ledger)
        .unwrap();
    writeln!(f, "{}", line(&new_hash, true)).unwrap();
    drop(f);
    assert_eq!(status().0["count"], 1);

    // A corrupt line is reported by number and ends the streak.
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&ledger)
        .unwrap();
    writeln!(f, "{{\"source_hash\": \"{new_hash}\", \"cle").unwrap();
    writeln!(f, "{}", line(&new_hash, true)).unwrap();
    drop(f);
    let (s, err) = status();
    assert_eq!(s["count"], 1);
    assert_eq!(s["corrupt_lines"], serde_json::json!([7]));
    assert!(err.contains("line 7 is corrupt"), "{err}");
}

#[test]
fn verify_outside_a_checkout_names_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let (code, _, err) = run(lanes(&["verify", "--status"]).current_dir(dir.path()));
    assert_eq!(code, 1);
    assert!(err.contains("cannot find the lanes sources"), "{err}");
    let (code, _, err) = run(lanes(&["verify", "--status"])
        .arg("--source")
        .arg(dir.path()));
    assert_eq!(code, 1);
    assert!(err.contains("holds no crates/ folder"), "{err}");
}

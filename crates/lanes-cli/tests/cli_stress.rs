//! `lanes stress` end to end on the CPU: a clean run passes, and every planted
//! failure (a perturbed result, a leaked buffer, a leaked lease) makes it fail;
//! injected allocation failures (a fraction of the caching allocator's
//! allocations) end cleanly without mismatches or leaks.

mod cli_support;

use cli_support::{json_object, lanes, model_dir, run};

/// A small suite: 2 threads × 8 requests of batch ≤ 3 and ≤ 16 tokens.
fn small(extra: &[&str]) -> Option<(i32, serde_json::Value, String)> {
    let model = model_dir()?;
    let mut args = vec![
        "stress",
        "--device",
        "cpu",
        "--threads",
        "2",
        "--requests",
        "8",
        "--distinct",
        "4",
        "--max-batch",
        "3",
        "--max-len",
        "16",
        "--seed",
        "7",
        "--json",
    ];
    args.extend_from_slice(extra);
    let (code, out, err) = run(lanes(&args).arg("--model").arg(model));
    Some((code, json_object(&out), err))
}

fn num(v: &serde_json::Value, field: &str) -> f64 {
    v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("field `{field}` is missing or not a number: {v}"))
}

#[test]
fn a_clean_run_passes_with_every_figure_reported() {
    let Some((code, v, err)) = small(&[]) else {
        return;
    };
    assert_eq!(code, 0, "stderr: {err}\n{v:#}");
    assert_eq!(v["passed"], true);
    assert_eq!(v["dtype"], "float32", "auto is float32 on the CPU");
    for field in [
        "requests",
        "errors",
        "mismatches",
        "min_cosine",
        "max_abs_diff",
        "leaked_bytes",
        "leases_outstanding",
        "events_outstanding",
        "seconds",
        "threads",
    ] {
        num(&v, field);
    }
    assert_eq!(v["device"], "cpu");
    assert_eq!(num(&v, "requests"), 16.0);
    assert_eq!(num(&v, "errors"), 0.0);
    assert_eq!(num(&v, "mismatches"), 0.0);
    assert_eq!(num(&v, "leaked_bytes"), 0.0);
    assert_eq!(num(&v, "leases_outstanding"), 0.0);
    assert!(num(&v, "min_cosine") >= 0.99999);
    assert!(num(&v, "max_abs_diff") <= 1e-5);
    assert!(v["first_mismatch"].is_null());
    let checks: Vec<&str> = v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    for name in [
        "results",
        "errors",
        "allocated_bytes",
        "leases",
        "events",
        "callbacks",
        "anchor",
    ] {
        assert!(checks.contains(&name), "check {name} missing: {checks:?}");
    }
}

#[test]
fn a_planted_mismatch_fails_the_run_and_is_described() {
    let Some((code, v, err)) = small(&["--plant", "mismatch"]) else {
        return;
    };
    assert_ne!(code, 0, "stderr: {err}");
    assert_eq!(v["passed"], false);
    assert!(num(&v, "mismatches") >= 1.0);
    let m = &v["first_mismatch"];
    assert_eq!(m["thread"], 0);
    assert!(m["row"].is_u64(), "{m}");
    assert!(m["max_abs_diff"].as_f64().unwrap() > 1e-5, "{m}");
}

#[test]
fn a_planted_mismatch_is_described_in_the_summary() {
    let Some(model) = model_dir() else { return };
    let (code, out, _) = run(lanes(&[
        "stress",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--requests",
        "1",
        "--distinct",
        "1",
        "--max-batch",
        "1",
        "--max-len",
        "4",
        "--no-anchor",
        "--plant",
        "mismatch",
    ])
    .arg("--model")
    .arg(model));
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("FAIL"), "{out}");
    assert!(
        out.contains("first mismatch: thread 0 step 0 (suite request 0"),
        "{out}"
    );
    assert!(out.contains("row 0: cosine"), "{out}");
}

#[test]
fn a_planted_leak_fails_the_run() {
    let Some((code, v, err)) = small(&["--plant", "leak"]) else {
        return;
    };
    assert_ne!(code, 0, "stderr: {err}");
    assert_eq!(v["passed"], false);
    assert!(num(&v, "leaked_bytes") > 0.0, "{v}");
    assert_eq!(num(&v, "mismatches"), 0.0);
}

#[test]
fn a_planted_lease_leak_fails_the_run() {
    let Some((code, v, err)) = small(&["--plant", "lease-leak"]) else {
        return;
    };
    assert_ne!(code, 0, "stderr: {err}");
    assert_eq!(v["passed"], false);
    assert!(num(&v, "leases_outstanding") > 0.0, "{v}");
}

#[test]
fn injected_oom_fails_requests_cleanly_and_the_run_passes() {
    let Some((code, v, err)) = small(&["--inject", "oom:0.3"]) else {
        return;
    };
    assert_eq!(code, 0, "stderr: {err}\n{v:#}");
    assert_eq!(v["passed"], true);
    assert!(num(&v, "errors") > 0.0, "{v}");
    assert!(num(&v, "injected_failures") > 0.0, "{v}");
    // Every failed request hit at least one injected failure.
    assert!(num(&v, "injected_failures") >= num(&v, "errors"), "{v}");
    assert_eq!(num(&v, "unclean_errors"), 0.0);
    assert_eq!(num(&v, "mismatches"), 0.0);
    assert_eq!(num(&v, "leaked_bytes"), 0.0);
    assert_eq!(num(&v, "leases_outstanding"), 0.0);
}

/// A request makes dozens of allocations, so at oom:0.3 nearly every one fails;
/// at a low P about half complete, and those must match their references.
#[test]
fn under_light_injection_the_surviving_requests_still_match() {
    let Some((code, v, err)) = small(&["--inject", "oom:0.015"]) else {
        return;
    };
    assert_eq!(code, 0, "stderr: {err}\n{v:#}");
    assert_eq!(v["passed"], true);
    assert!(num(&v, "errors") > 0.0, "{v}");
    assert!(num(&v, "completed") > 0.0, "{v}");
    assert!(num(&v, "rows_checked") > 0.0, "{v}");
    assert_eq!(num(&v, "unclean_errors"), 0.0);
    assert_eq!(num(&v, "mismatches"), 0.0);
    assert_eq!(num(&v, "leaked_bytes"), 0.0);
    assert_eq!(num(&v, "events_outstanding"), 0.0);
}

#[test]
fn bad_flags_are_errors_not_panics() {
    let (code, _, err) = run(&mut lanes(&["stress", "--inject", "0.3"]));
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("expected oom:P"), "{err}");
    let (code, _, err) = run(&mut lanes(&["stress", "--threads", "two"]));
    assert_eq!(code, 2, "{err}");
    let Some(model) = model_dir() else { return };
    let (code, _, err) = run(lanes(&["stress", "--device", "cpu", "--max-batch", "64"])
        .arg("--model")
        .arg(model));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("--max-batch must be 1..=32"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    let (code, _, err) = run(lanes(&["stress", "--device", "cpu", "--dtype", "float16"])
        .arg("--model")
        .arg(model_dir().unwrap()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("precision float16 on device cpu"), "{err}");
    let (code, _, err) = run(lanes(&["stress", "--device", "cpu", "--threads", "65"])
        .arg("--model")
        .arg(model_dir().unwrap()));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("65 lanes asked for"), "{err}");
}

/// The modules of `stress/` and `bench/` form no import circle: a submodule uses
/// its siblings (acyclically) but never an item of its parent `mod.rs`, which
/// uses them all.
#[test]
fn stress_and_bench_modules_form_no_import_circle() {
    for dir in ["src/stress", "src/bench"] {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
        let mut modules: Vec<(String, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .map(|p| {
                let name = p.file_stem().unwrap().to_string_lossy().into_owned();
                (name, std::fs::read_to_string(&p).unwrap())
            })
            .filter(|(name, _)| name != "mod")
            .collect();
        modules.sort();
        let names: Vec<&str> = modules.iter().map(|(n, _)| n.as_str()).collect();
        // Edges: module -> the sibling modules it names as `super::NAME`.
        let mut edges: Vec<Vec<usize>> = vec![Vec::new(); modules.len()];
        for (i, (name, text)) in modules.iter().enumerate() {
            let code: String = text
                .lines()
                .filter(|l| !l.trim_start().starts_with("//"))
                .collect::<Vec<_>>()
                .join("\n");
            for (at, _) in code.match_indices("super::") {
                let rest = &code[at + "super::".len()..];
                let ident: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '{')
                    .collect();
                if ident == "*" || rest.starts_with('*') {
                    continue; // `use super::*` in a test module
                }
                let targets: Vec<String> = if ident.starts_with('{') {
                    let end = rest.find('}').unwrap_or(rest.len());
                    rest[1..end]
                        .split(',')
                        .map(|s| s.trim().split("::").next().unwrap_or("").to_string())
                        .collect()
                } else {
                    vec![ident]
                };
                for t in targets.iter().filter(|t| !t.is_empty()) {
                    match names.iter().position(|n| n == t) {
                        Some(j) => edges[i].push(j),
                        None => panic!(
                            "{}/{name}.rs uses `super::{t}`, an item of mod.rs, which uses {name}: a circle",
                            dir.display()
                        ),
                    }
                }
            }
        }
        // Depth-first search for a cycle among the siblings.
        fn visit(i: usize, edges: &[Vec<usize>], state: &mut [u8], path: &mut Vec<usize>) -> bool {
            state[i] = 1;
            path.push(i);
            for &j in &edges[i] {
                if state[j] == 1 || (state[j] == 0 && visit(j, edges, state, path)) {
                    path.push(j);
                    return true;
                }
            }
            path.pop();
            state[i] = 2;
            false
        }
        let mut state = vec![0u8; modules.len()];
        for i in 0..modules.len() {
            let mut path = Vec::new();
            if state[i] == 0 && visit(i, &edges, &mut state, &mut path) {
                let cycle: Vec<&str> = path.iter().map(|&k| names[k]).collect();
                panic!("import circle in {}: {}", dir.display(), cycle.join(" -> "));
            }
        }
    }
}

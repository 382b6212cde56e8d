//! `lanes bench` and `lanes bench alloc` on a tiny CPU run: every field is there
//! and every figure is positive. Timings themselves are never asserted.

mod cli_support;

use cli_support::{json_lines, lanes, model_dir, run};

fn positive(v: &serde_json::Value, field: &str) -> f64 {
    let x = v[field]
        .as_f64()
        .unwrap_or_else(|| panic!("field `{field}` missing or not a number: {v}"));
    assert!(x > 0.0, "`{field}` is {x}: {v}");
    x
}

#[test]
fn a_tiny_bench_reports_both_modes_with_every_field() {
    let Some(model) = model_dir() else { return };
    let dir = tempfile::tempdir().unwrap();
    let png = dir.path().join("bench.png");
    let (code, out, err) = run(lanes(&[
        "bench",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--batch",
        "1",
        "--seq",
        "8",
        "--duration-ms",
        "30",
        "--json",
    ])
    .arg("--model")
    .arg(model)
    .arg("--plot")
    .arg(&png));
    assert_eq!(code, 0, "stderr: {err}");
    let cells = json_lines(&out);
    assert_eq!(cells.len(), 2, "{out}");
    let modes: Vec<&str> = cells.iter().map(|c| c["mode"].as_str().unwrap()).collect();
    assert_eq!(modes, ["lanes", "global-lock"]);
    for c in &cells {
        assert_eq!(c["device"], "cpu");
        assert_eq!(c["dtype"], "float32", "auto is float32 on the CPU");
        assert_eq!(c["threads"], 1);
        assert_eq!(c["batch"], 1);
        assert_eq!(c["seq"], 8);
        for f in ["seq_per_s", "p50_ms", "p99_ms", "efficiency"] {
            positive(c, f);
        }
        assert!(positive(c, "p99_ms") >= positive(c, "p50_ms"));
    }
    let bytes = std::fs::read(&png).expect("the plot was written");
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
}

#[test]
fn repeated_list_values_run_once_in_first_appearance_order() {
    let Some(model) = model_dir() else { return };
    let (code, out, err) = run(lanes(&[
        "bench",
        "--device",
        "cpu",
        "--threads",
        "2,1,2",
        "--batch",
        "2,1,2",
        "--modes",
        "lanes,lanes",
        "--seq",
        "4",
        "--iters",
        "1",
        "--json",
    ])
    .arg("--model")
    .arg(model));
    assert_eq!(code, 0, "stderr: {err}");
    let cells: Vec<(u64, u64, String)> = json_lines(&out)
        .iter()
        .map(|c| {
            (
                c["batch"].as_u64().unwrap(),
                c["threads"].as_u64().unwrap(),
                c["mode"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let lanes_mode = || "lanes".to_string();
    assert_eq!(
        cells,
        [
            (2, 2, lanes_mode()),
            (2, 1, lanes_mode()),
            (1, 2, lanes_mode()),
            (1, 1, lanes_mode())
        ]
    );
    let (code, out, err) = run(&mut lanes(&[
        "bench",
        "alloc",
        "--device",
        "cpu",
        "--threads",
        "1,1",
        "--bytes",
        "4096,512,4096",
        "--paths",
        "backend,backend",
        "--duration-ms",
        "5",
        "--json",
    ]));
    assert_eq!(code, 0, "stderr: {err}");
    let sizes: Vec<u64> = json_lines(&out)
        .iter()
        .map(|c| c["bytes"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [4096, 512]);
}

#[test]
fn the_dtype_axis_resolves_repeats_away_and_refuses_half_precision_on_the_cpu() {
    let Some(model) = model_dir() else { return };
    let base = [
        "bench",
        "--device",
        "cpu",
        "--threads",
        "1",
        "--batch",
        "1",
        "--seq",
        "4",
        "--iters",
        "1",
        "--modes",
        "lanes",
        "--json",
    ];
    // auto is float32 on the CPU: one grid, not two.
    let (code, out, err) = run(lanes(&base)
        .args(["--dtype", "auto,float32"])
        .arg("--model")
        .arg(&model));
    assert_eq!(code, 0, "stderr: {err}");
    let dtypes: Vec<String> = json_lines(&out)
        .iter()
        .map(|c| c["dtype"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(dtypes, ["float32"]);
    for half in ["float16", "bfloat16", "float32,float16"] {
        let (code, out, err) = run(lanes(&base)
            .args(["--dtype", half])
            .arg("--model")
            .arg(&model));
        assert_eq!(code, 1, "{half}: {err}");
        assert!(err.contains("float32 only"), "{half}: {err}");
        assert!(
            out.trim().is_empty(),
            "{half}: nothing measured before the error: {out}"
        );
    }
    let (code, _, err) = run(&mut lanes(&["bench", "--dtype", "float8"]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn bench_alloc_reports_the_allocator_beside_the_backend() {
    let (code, out, err) = run(&mut lanes(&[
        "bench",
        "alloc",
        "--device",
        "cpu",
        "--threads",
        "1,2",
        "--bytes",
        "4096",
        "--duration-ms",
        "20",
        "--json",
    ]));
    assert_eq!(code, 0, "stderr: {err}");
    let cells = json_lines(&out);
    assert_eq!(cells.len(), 4, "{out}");
    let paths: Vec<(&str, u64)> = cells
        .iter()
        .map(|c| (c["path"].as_str().unwrap(), c["threads"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        paths,
        [
            ("allocator", 1),
            ("allocator", 2),
            ("backend", 1),
            ("backend", 2)
        ]
    );
    for c in &cells {
        assert_eq!(c["bytes"], 4096);
        for f in ["pairs", "ns_per_pair", "pairs_per_s"] {
            positive(c, f);
        }
    }
}

#[test]
fn bench_flags_are_checked() {
    let (code, _, err) = run(&mut lanes(&["bench", "--threads", "0", "--device", "cpu"]));
    assert_ne!(code, 0);
    assert!(err.contains("at least 1"), "{err}");
    let (code, _, err) = run(&mut lanes(&["bench", "--threads", "65", "--device", "cpu"]));
    assert_ne!(code, 0);
    assert!(err.contains("--threads 65 exceeds"), "{err}");
    let (code, _, err) = run(&mut lanes(&["bench", "--modes", "fast"]));
    assert_eq!(code, 2, "{err}");
    let (code, _, err) = run(&mut lanes(&["bench", "--iters", "3", "--duration-ms", "5"]));
    assert_eq!(code, 2, "{err}");
}

#[test]
fn bench_launch_reports_every_case_with_every_field() {
    let (code, out, err) = run(&mut lanes(&[
        "bench",
        "launch",
        "--device",
        "cpu",
        "--threads",
        "1,2",
        "--duration-ms",
        "50",
        "--graph-nodes",
        "44",
        "--json",
    ]));
    assert_eq!(code, 0, "stderr: {err}");
    let cells = json_lines(&out);
    let cases: Vec<(&str, u64)> = cells
        .iter()
        .map(|c| (c["case"].as_str().unwrap(), c["threads"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        cases,
        [
            ("raw-launch", 1),
            ("lease+launch+record", 1),
            ("threads", 1),
            ("threads", 2)
        ]
    );
    for c in &cells {
        assert_eq!(c["kind"], "launch");
        assert_eq!(c["device"], "cpu");
        assert!(c["source"].as_str().is_some_and(|s| !s.is_empty()), "{c}");
        for f in ["ns_per_op", "ops_per_s", "seconds"] {
            positive(c, f);
        }
    }
    assert!(cells[1]["overhead_ns"].is_number(), "{}", cells[1]);
    // The CUDA-graph cases need CUDA: on the CPU they are left out, and said so.
    assert!(
        err.contains("graph-replay, replay+copies: skipped (cpu has no CUDA graphs)"),
        "stderr: {err}"
    );
}

//! scripts/device-report.sh in its `--quick` mode on whatever adapter the tests use (lavapipe in
//! CI): it must finish, write valid JSON with every key the full report has, and fill in the
//! parts this build can measure (the adapter, the EM loop, the whole model with dispatches and
//! submits per step).

use std::process::Command;

#[test]
fn quick_device_report_writes_every_key() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = std::env::temp_dir().join(format!("vlsa-device-report-{}.json", std::process::id()));
    let status = Command::new("bash")
        .arg(format!("{root}/scripts/device-report.sh"))
        .args(["--quick", "--out"])
        .arg(&out)
        .env("VLSA_BIN", env!("CARGO_BIN_EXE_vlsa"))
        // Examples are not built for this test: the attention part reports itself skipped.
        .env("VLSA_EXAMPLES", format!("{root}/target/debug/examples"))
        .output()
        .expect("bash runs");
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(status.status.success(), "device-report.sh failed: {stderr}");
    let text = std::fs::read_to_string(&out).unwrap();
    let _ = std::fs::remove_file(&out);
    let report: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    for key in ["date", "quick", "host_cpu", "adapter", "matmul", "em", "attention", "model", "tests", "seconds"] {
        assert!(report.get(key).is_some(), "no `{key}` in {text}");
    }
    for part in ["matmul", "em", "attention", "model", "tests"] {
        assert!(report[part]["status"].is_string(), "`{part}` has no status: {text}");
    }
    assert!(report["adapter"]["name"].as_str().is_some_and(|s| !s.is_empty()), "{text}");
    assert!(report["em"]["iteration_ms"].as_f64().is_some_and(|v| v > 0.0), "{text}");
    assert!(report["em"]["iteration_ms_per_step"].as_f64().is_some_and(|v| v > 0.0), "{text}");
    let model = report["model"]["results"].as_array().expect("model results");
    assert_eq!(model.len(), 4, "forward and training step at two batch sizes: {text}");
    for r in model {
        for key in ["gpu_ms", "wall_ms", "dispatches", "submits"] {
            assert!(r[key].as_f64().is_some_and(|v| v > 0.0), "model result without {key}: {r}");
        }
    }
}

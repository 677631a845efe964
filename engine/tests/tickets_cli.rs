//! The `redrain tickets` command line end to end: plan, gen, verify, dump, reconcile, keyring,
//! with their exit codes.

mod tickets_common;

use std::process::{Command, Output};

fn redrain(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_redrain")).arg("tickets").args(args).output().expect("redrain runs")
}

fn text(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

#[test]
fn plan_gen_verify_dump_reconcile_and_keyring_from_the_command_line() {
    let root = tempfile::tempdir().unwrap();
    let budget = root.path().join("budget.toml");
    std::fs::write(&budget, tickets_common::SMALL_BUDGET).unwrap();
    let budget = budget.to_str().unwrap();
    let out = root.path().join("rain");
    let out = out.to_str().unwrap();
    let keyring = format!("{out}.keyring.json");

    let plan = redrain(&["plan", "--budget", budget, "--nodes", "3", "--cores", "2"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    assert!(text(&plan).contains("total: 23000 packets, 99832.10 yuan"), "{}", text(&plan));

    let gen = redrain(&["gen", "--budget", budget, "--nodes", "3", "--cores", "2", "--out", out, "--seed", "9"]);
    assert_eq!(gen.status.code(), Some(0), "{}", text(&gen));
    let verify = redrain(&["verify", "--dir", out, "--keyring", &keyring, "--budget", budget]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));

    let dump =
        redrain(&["dump", "--dir", out, "--keyring", &keyring, "--file", "n0001-c000-s001.tickets", "--count", "5"]);
    assert_eq!(dump.status.code(), Some(0), "{}", text(&dump));
    let opened: String = String::from_utf8(dump.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let ticket: serde_json::Value = serde_json::from_str(line).unwrap();
            format!(
                "{{\"packet_id\":{},\"amount_fen\":{},\"key_id\":{},\"user_id\":1,\"node\":1,\"core\":0,\"opened_at_ms\":0}}\n",
                ticket["packet_id"], ticket["amount_fen"], ticket["key_id"]
            )
        })
        .collect();
    assert_eq!(opened.lines().count(), 5);
    let opened_path = root.path().join("opened.ndjson");
    std::fs::write(&opened_path, &opened).unwrap();
    let opened_path = opened_path.to_str().unwrap();
    let reconcile = redrain(&["reconcile", "--dir", out, "--keyring", &keyring, "--opened", opened_path, "--json"]);
    assert_eq!(reconcile.status.code(), Some(0), "{}", text(&reconcile));
    let report: serde_json::Value = serde_json::from_slice(&reconcile.stdout).unwrap();
    assert_eq!(
        report["instant"]["packets"].as_u64().unwrap() + report["after_reconciliation"]["packets"].as_u64().unwrap(),
        5
    );

    // The same opens twice: duplicates, exit 1.
    std::fs::write(root.path().join("opened.ndjson"), format!("{opened}{opened}")).unwrap();
    let reconcile = redrain(&["reconcile", "--dir", out, "--keyring", &keyring, "--opened", opened_path]);
    assert_eq!(reconcile.status.code(), Some(1), "{}", text(&reconcile));
    assert!(text(&reconcile).contains("duplicate"), "{}", text(&reconcile));

    // Blacklisting a used key makes verify fail with exit 1.
    let first_key =
        serde_json::from_str::<serde_json::Value>(opened.lines().next().unwrap()).unwrap()["key_id"].to_string();
    let edit = redrain(&["keyring", "--keyring", &keyring, "--blacklist", &first_key]);
    assert_eq!(edit.status.code(), Some(0), "{}", text(&edit));
    let verify = redrain(&["verify", "--dir", out, "--keyring", &keyring]);
    assert_eq!(verify.status.code(), Some(1), "{}", text(&verify));
    assert!(text(&verify).contains("blacklisted_key"), "{}", text(&verify));
}

#[test]
fn impossible_budget_exits_2_naming_the_field() {
    let root = tempfile::tempdir().unwrap();
    let budget = root.path().join("budget.toml");
    std::fs::write(
        &budget,
        tickets_common::SMALL_BUDGET.replace("{ early = 30, late = 70 }", "{ early = 30, late = 60 }"),
    )
    .unwrap();
    let plan = redrain(&["plan", "--budget", budget.to_str().unwrap()]);
    assert_eq!(plan.status.code(), Some(2));
    assert!(text(&plan).contains("merchants[1].slot_weights"), "{}", text(&plan));
    assert!(text(&plan).contains("must be 100"), "{}", text(&plan));
}

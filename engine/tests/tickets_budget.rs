//! Budget validation: every impossible budget is refused with the field and the reason.

mod tickets_common;

use redrain_engine::tickets::budget::{Budget, BudgetError};
use redrain_engine::tickets::plan::{Plan, Topology};
use tickets_common::SMALL_BUDGET;

fn refused(text: &str) -> BudgetError {
    Budget::parse(text).expect_err("budget must be refused")
}

#[test]
fn small_budget_is_accepted_and_planned_exactly() {
    let budget = Budget::parse(SMALL_BUDGET).unwrap();
    let plan = Plan::new(&budget, Topology { nodes: 3, cores: 2 }).unwrap();
    assert_eq!(plan.packets_total, 23_000);
    assert_eq!(plan.amount_fen_total, 3_000_000 + 6_543_210 + 440_000);
    assert_eq!(plan.files.len(), 2 * 3 * 2);
    assert_eq!(plan.files.iter().map(|file| file.packets).sum::<u64>(), 23_000);
    assert_eq!(plan.files.iter().map(|file| file.amount_fen).sum::<u64>(), plan.amount_fen_total);
    assert_eq!(plan.batches.iter().map(|batch| batch.amount_fen).sum::<u64>(), plan.amount_fen_total);
    let script = plan.fund_script(true);
    assert!(script.contains("tea"), "{script}");
    assert!(script.contains("node 2"), "{script}");
}

#[test]
fn budget_below_min_times_count_is_refused_with_field() {
    let text = SMALL_BUDGET.replace("budget_fen = 440_000", "budget_fen = 439_999");
    let error = refused(&text);
    assert!(matches!(error, BudgetError::BudgetBelowMinimum { needed_fen: 440_000, .. }), "{error}");
    assert_eq!(error.field(), "merchants[2].budget_fen");
    assert!(error.to_string().contains("below packets x min"));
}

#[test]
fn budget_above_max_times_count_is_refused_with_field() {
    let text = SMALL_BUDGET.replace("budget_fen = 440_000", "budget_fen = 440_001");
    let error = refused(&text);
    assert!(matches!(error, BudgetError::BudgetAboveMaximum { possible_fen: 440_000, .. }), "{error}");
    assert_eq!(error.field(), "merchants[2].budget_fen");
}

#[test]
fn slot_weights_that_do_not_add_up_are_refused() {
    let text = SMALL_BUDGET.replace("{ early = 60, late = 40 }", "{ early = 60, late = 30 }");
    let error = refused(&text);
    assert!(matches!(error, BudgetError::WeightsSum { sum: 90, .. }), "{error}");
    assert_eq!(error.field(), "merchants[0].slot_weights");
}

#[test]
fn unknown_slot_in_weights_is_refused() {
    let text = SMALL_BUDGET.replace("{ late = 100 }", "{ night = 100 }");
    let error = refused(&text);
    assert!(matches!(error, BudgetError::UnknownSlot { .. }), "{error}");
    assert_eq!(error.field(), "merchants[2].slot_weights.night");
}

#[test]
fn duplicate_merchant_id_is_refused() {
    let text = SMALL_BUDGET.replace("id = \"phones\"", "id = \"tea\"");
    let error = refused(&text);
    assert!(matches!(&error, BudgetError::DuplicateId { id, .. } if id == "tea"), "{error}");
    assert_eq!(error.field(), "merchants[1].id");
}

#[test]
fn duplicate_slot_id_is_refused() {
    let text = SMALL_BUDGET.replacen("id = \"late\"", "id = \"early\"", 1);
    let error = refused(&text);
    assert!(matches!(error, BudgetError::DuplicateId { .. }), "{error}");
    assert_eq!(error.field(), "event.slots[1].id");
}

#[test]
fn min_above_max_is_refused() {
    let text = SMALL_BUDGET.replace("min_amount_fen = 200", "min_amount_fen = 6_000");
    let error = refused(&text);
    assert!(matches!(error, BudgetError::MinAboveMax { .. }), "{error}");
    assert_eq!(error.field(), "merchants[1].min_amount_fen");
}

#[test]
fn slot_times_are_checked() {
    let backwards = SMALL_BUDGET.replace("end = \"22:30\"", "end = \"20:59\"");
    let error = refused(&backwards);
    assert!(matches!(error, BudgetError::SlotTimes { .. }), "{error}");
    assert_eq!(error.field(), "event.slots[1]");
    let malformed = SMALL_BUDGET.replace("end = \"22:30\"", "end = \"25:00\"");
    assert_eq!(refused(&malformed).field(), "event.slots[1].end");
    let overlapping = SMALL_BUDGET.replace("start = \"21:00\"", "start = \"20:30\"");
    assert!(matches!(refused(&overlapping), BudgetError::SlotTimes { .. }));
}

#[test]
fn key_cap_below_twice_the_largest_packet_is_refused() {
    let text = SMALL_BUDGET.replace("key_coverage_cap_fen = 2_000_000", "key_coverage_cap_fen = 39_999");
    let error = refused(&text);
    assert!(matches!(error, BudgetError::CapTooSmall { max_fen: 20_000, .. }), "{error}");
    assert_eq!(error.field(), "event.key_coverage_cap_fen");
}

#[test]
fn amounts_beyond_the_ticket_field_are_refused() {
    let text = SMALL_BUDGET.replace("max_amount_fen = 20_000", "max_amount_fen = 16_777_216");
    let error = refused(&text);
    assert!(matches!(error, BudgetError::OutOfRange { max: 16_777_215, .. }), "{error}");
    assert_eq!(error.field(), "merchants[0].max_amount_fen");
}

#[test]
fn zero_packets_and_empty_lists_are_refused() {
    let text = SMALL_BUDGET.replace("packets = 10_000", "packets = 0");
    assert_eq!(refused(&text).field(), "merchants[0].packets");
    let no_merchants = SMALL_BUDGET.split("[[merchants]]").next().unwrap().to_string();
    let error = refused(&no_merchants);
    assert!(matches!(error, BudgetError::Count { count: 0, .. }), "{error}");
    assert_eq!(error.field(), "merchants");
}

#[test]
fn malformed_toml_and_unknown_fields_are_parse_errors() {
    assert!(matches!(refused("[event"), BudgetError::Parse(_)));
    let unknown_field = SMALL_BUDGET.replace("kind = \"logo\"", "kind = \"logo\"\ncolour = \"red\"");
    assert!(matches!(refused(&unknown_field), BudgetError::Parse(_)));
    let unknown_kind = SMALL_BUDGET.replace("kind = \"logo\"", "kind = \"hologram\"");
    assert!(matches!(refused(&unknown_kind), BudgetError::Parse(_)));
}

#[test]
fn topology_bounds_are_enforced() {
    let budget = Budget::parse(SMALL_BUDGET).unwrap();
    let error = Plan::new(&budget, Topology { nodes: 0, cores: 2 }).unwrap_err();
    assert_eq!(error.field(), "--nodes");
    let error = Plan::new(&budget, Topology { nodes: 3, cores: 5000 }).unwrap_err();
    assert_eq!(error.field(), "--cores");
}

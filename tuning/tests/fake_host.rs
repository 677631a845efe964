//! `tune check` and `--apply` against fake `/proc` and `/sys` trees in a temporary
//! directory: reading, statuses, n/a for missing files, writes, exit codes.

use std::fs;
use std::path::Path;

use clap::Parser;
use redrain_tuning::apply::{apply_report, ApplyResult};
use redrain_tuning::check::{check_host, Remedy, Report, Status};
use redrain_tuning::{Host, Target, TuneArgs};

fn write(root: &Path, relative: &str, text: &str) {
    let path = root.join(relative);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, text).unwrap();
}

fn read(root: &Path, relative: &str) -> String {
    fs::read_to_string(root.join(relative)).unwrap()
}

const TARGET: Target = Target { sessions: 100_000, cores: 2, io_memory_bytes_per_executor: 10 << 20 };

/// A host tuned exactly as recommended for [`TARGET`].
fn tuned_host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    write(
        root,
        "proc/self/limits",
        "Limit                     Soft Limit           Hard Limit           Units     \n\
         Max open files            1048576              1048576              files     \n\
         Max locked memory         unlimited            unlimited            bytes     \n",
    );
    write(root, "proc/self/status", "Name:\tredrain\nCpus_allowed_list:\t0-1\n");
    write(root, "proc/meminfo", "MemTotal:       24682416 kB\n");
    for (key, value) in [
        ("fs/nr_open", "1048576"),
        ("fs/file-max", "2465610"),
        ("net/core/somaxconn", "8192"),
        ("net/ipv4/tcp_max_syn_backlog", "8192"),
        ("net/core/netdev_max_backlog", "16384"),
        ("net/ipv4/tcp_mem", "200000\t400000\t600000"),
        ("net/ipv4/tcp_rmem", "4096\t16384\t6291456"),
        ("net/ipv4/tcp_wmem", "4096\t16384\t4194304"),
        ("net/ipv4/ip_local_port_range", "10000\t65535"),
        ("net/ipv4/tcp_tw_reuse", "1"),
        ("net/ipv4/tcp_fin_timeout", "15"),
        ("kernel/io_uring_disabled", "0"),
        ("kernel/io_uring_group", "-1"),
        ("vm/max_map_count", "262144"),
        ("vm/swappiness", "10"),
    ] {
        write(root, &format!("proc/sys/{key}"), &format!("{value}\n"));
    }
    write(
        root,
        "proc/interrupts",
        "           CPU0       CPU1\n\
          34:         16          0  PCI-MSIX-0000:00:05.0   1-edge      virtio4-input\n\
          90:        100          0  IR-PCI-MSI 1572864-edge      eth0-TxRx-0\n\
          91:          0        100  IR-PCI-MSI 1572865-edge      eth0-TxRx-1\n\
         NMI:          0          0   Non-maskable interrupts\n",
    );
    write(root, "proc/irq/34/smp_affinity_list", "0\n");
    write(root, "proc/irq/90/smp_affinity_list", "0\n");
    write(root, "proc/irq/91/smp_affinity_list", "1\n");
    for cpu in 0..2 {
        write(root, &format!("sys/devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor"), "performance\n");
    }
    write(root, "sys/devices/system/cpu/isolated", "\n");
    write(root, "sys/kernel/mm/transparent_hugepage/enabled", "always [madvise] never\n");
    fs::create_dir_all(root.join("sys/class/net/eth0")).unwrap();
    fs::create_dir_all(root.join("sys/class/net/lo")).unwrap();
    dir
}

fn item<'a>(report: &'a Report, setting: &str) -> &'a redrain_tuning::Item {
    report.items.iter().find(|item| item.setting == setting).unwrap_or_else(|| panic!("no item {setting}"))
}

#[test]
fn tuned_host_is_all_ok_and_exits_zero() {
    let dir = tuned_host();
    let report = check_host(&Host::under(dir.path()), &TARGET);
    let short: Vec<_> = report
        .items
        .iter()
        .filter(|item| item.status.falls_short())
        .map(|item| (&item.setting, &item.current, item.status))
        .collect();
    assert!(short.is_empty(), "{short:?}");
    assert_eq!(report.exit_code(), 0);
    assert_eq!(item(&report, "RLIMIT_NOFILE soft").current, "1048576");
    assert_eq!(item(&report, "RLIMIT_MEMLOCK soft").current, "unlimited");
    assert_eq!(item(&report, "net.ipv4.tcp_mem").current, "200000 400000 600000");
    assert_eq!(item(&report, "transparent_hugepage/enabled").current, "madvise");
    assert_eq!(item(&report, "cpufreq scaling_governor").current, "performance on 0-1");
}

#[test]
fn empty_host_tree_gives_not_applicable_items_and_no_panic() {
    let dir = tempfile::tempdir().unwrap();
    let report = check_host(&Host::under(dir.path()), &TARGET);
    assert!(!report.items.is_empty());
    for item in &report.items {
        assert_eq!(item.status, Status::NotApplicable, "{item:?}");
        assert!(!item.note.is_empty(), "n/a needs a reason: {item:?}");
    }
    assert!(item(&report, "fs.nr_open").note.contains("not present"));
    assert!(item(&report, "kernel.io_uring_disabled").note.contains("before 6.6"));
    assert_eq!(report.exit_code(), 0, "n/a does not fail the check");
}

#[test]
fn unparseable_file_is_not_applicable_with_the_parse_error() {
    let dir = tuned_host();
    write(dir.path(), "proc/sys/net/ipv4/tcp_mem", "lots\n");
    let report = check_host(&Host::under(dir.path()), &TARGET);
    let tcp_mem = item(&report, "net.ipv4.tcp_mem");
    assert_eq!(tcp_mem.status, Status::NotApplicable);
    assert!(tcp_mem.note.contains("cannot parse"), "{}", tcp_mem.note);
}

#[test]
fn shortfalls_are_low_high_or_differs_and_exit_one() {
    let dir = tuned_host();
    let root = dir.path();
    write(root, "proc/sys/net/core/somaxconn", "4096\n");
    write(root, "proc/sys/net/ipv4/tcp_mem", "287832\t383779\t575664\n");
    write(root, "proc/sys/net/ipv4/tcp_rmem", "4096\t131072\t33554432\n");
    write(root, "proc/sys/vm/swappiness", "60\n");
    write(root, "proc/sys/net/ipv4/tcp_tw_reuse", "2\n");
    write(root, "sys/kernel/mm/transparent_hugepage/enabled", "[always] madvise never\n");
    write(
        root,
        "proc/self/limits",
        "Max open files            20000                20000                files\n\
         Max locked memory         8388608              8388608              bytes\n",
    );
    let report = check_host(&Host::under(root), &TARGET);
    assert_eq!(item(&report, "net.core.somaxconn").status, Status::Low);
    assert_eq!(item(&report, "net.core.somaxconn").recommended, ">= 8192");
    // Only pressure and high fall short of 200000 400000 600000, and that is enough.
    assert_eq!(item(&report, "net.ipv4.tcp_mem").status, Status::Low);
    assert_eq!(item(&report, "net.ipv4.tcp_rmem").status, Status::High);
    assert_eq!(item(&report, "net.ipv4.tcp_rmem").recommended, "4096 16384 33554432", "a large max is kept");
    assert_eq!(item(&report, "vm.swappiness").status, Status::High);
    assert_eq!(item(&report, "net.ipv4.tcp_tw_reuse").status, Status::Differs);
    assert_eq!(item(&report, "transparent_hugepage/enabled").status, Status::Differs);
    assert_eq!(item(&report, "RLIMIT_NOFILE soft").status, Status::Low);
    let memlock = item(&report, "RLIMIT_MEMLOCK soft");
    assert_eq!(memlock.status, Status::Low);
    assert!(memlock.note.contains("io_memory must be <= 1.3 MiB"), "{}", memlock.note);
    assert_eq!(report.exit_code(), 1);
}

#[test]
fn io_uring_disabled_differs_and_is_never_applied() {
    let dir = tuned_host();
    write(dir.path(), "proc/sys/kernel/io_uring_disabled", "2\n");
    let host = Host::under(dir.path());
    let report = check_host(&host, &TARGET);
    let disabled = item(&report, "kernel.io_uring_disabled");
    assert_eq!(disabled.status, Status::Differs);
    assert!(matches!(disabled.remedy, Remedy::Manual { .. }));
    let outcomes = apply_report(&host, &report);
    assert!(matches!(outcomes[0].result, ApplyResult::Manual { .. }));
    assert_eq!(read(dir.path(), "proc/sys/kernel/io_uring_disabled"), "2\n");
}

#[test]
fn governor_lists_cpus_per_governor_and_differs_unless_all_performance() {
    let dir = tuned_host();
    write(dir.path(), "sys/devices/system/cpu/cpu1/cpufreq/scaling_governor", "powersave\n");
    let report = check_host(&Host::under(dir.path()), &TARGET);
    let governor = item(&report, "cpufreq scaling_governor");
    assert_eq!(governor.current, "performance on 0; powersave on 1");
    assert_eq!(governor.status, Status::Differs);
}

#[test]
fn nic_queue_irqs_are_found_and_all_on_one_cpu_differs() {
    let dir = tuned_host();
    let report = check_host(&Host::under(dir.path()), &TARGET);
    let irqs = item(&report, "NIC queue IRQ affinity");
    // virtio4-input (a random number generator's queue) is not a NIC queue.
    assert_eq!(irqs.current, "90 eth0-TxRx-0 -> 0, 91 eth0-TxRx-1 -> 1");
    assert_eq!(irqs.status, Status::Info);

    write(dir.path(), "proc/irq/91/smp_affinity_list", "0\n");
    let report = check_host(&Host::under(dir.path()), &TARGET);
    assert_eq!(item(&report, "NIC queue IRQ affinity").status, Status::Differs);
}

#[test]
fn no_nic_queue_irqs_is_not_applicable() {
    let dir = tuned_host();
    write(dir.path(), "proc/interrupts", "           CPU0\n 26:          0  IO-APIC   4-edge      ttyS0\n");
    let report = check_host(&Host::under(dir.path()), &TARGET);
    assert_eq!(item(&report, "NIC queue IRQ affinity").status, Status::NotApplicable);
}

#[test]
fn apply_writes_short_sysctls_to_the_fake_root_and_leaves_others() {
    let dir = tuned_host();
    let root = dir.path();
    write(root, "proc/sys/net/core/somaxconn", "4096\n");
    write(root, "proc/sys/net/ipv4/tcp_mem", "1\t2\t3\n");
    write(root, "proc/sys/net/ipv4/ip_local_port_range", "32768\t60999\n");
    write(root, "proc/sys/vm/swappiness", "60\n");
    write(
        root,
        "proc/self/limits",
        "Max open files            20000                20000                files\n\
         Max locked memory         unlimited            unlimited            bytes\n",
    );
    let host = Host::under(root);
    let report = check_host(&host, &TARGET);
    let outcomes = apply_report(&host, &report);

    assert_eq!(read(root, "proc/sys/net/core/somaxconn"), "8192\n");
    assert_eq!(read(root, "proc/sys/net/ipv4/tcp_mem"), "200000 400000 600000\n");
    assert_eq!(read(root, "proc/sys/net/ipv4/ip_local_port_range"), "10000 65535\n");
    assert_eq!(read(root, "proc/sys/vm/swappiness"), "10\n");
    // Items that were ok are not rewritten (the fake keeps its tab separators).
    assert_eq!(read(root, "proc/sys/net/ipv4/tcp_rmem"), "4096\t16384\t6291456\n");

    let settings: Vec<&str> = outcomes.iter().map(|o| o.setting.as_str()).collect();
    assert_eq!(
        settings,
        vec![
            "RLIMIT_NOFILE soft",
            "RLIMIT_NOFILE hard",
            "net.core.somaxconn",
            "net.ipv4.tcp_mem",
            "net.ipv4.ip_local_port_range",
            "vm.swappiness"
        ]
    );
    assert!(matches!(outcomes[0].result, ApplyResult::Manual { .. }));
    assert_eq!(outcomes[2].result, ApplyResult::Written { value: "8192".to_string() });

    let after = check_host(&host, &TARGET);
    let still_short: Vec<&str> =
        after.items.iter().filter(|item| item.status.falls_short()).map(|item| item.setting.as_str()).collect();
    assert_eq!(still_short, vec!["RLIMIT_NOFILE soft", "RLIMIT_NOFILE hard"]);
}

#[test]
fn apply_reports_a_sysctl_it_cannot_write_and_never_creates_files() {
    let dir = tuned_host();
    let root = dir.path();
    // A directory where the file should be: opening it for writing fails even as root.
    fs::remove_file(root.join("proc/sys/vm/swappiness")).unwrap();
    fs::create_dir(root.join("proc/sys/vm/swappiness")).unwrap();
    fs::write(root.join("proc/sys/vm/max_map_count"), "65530\n").unwrap();
    let host = Host::under(root);
    let mut report = check_host(&host, &TARGET);
    // Pretend swappiness had been read as too high, to drive the write path.
    let swappiness = report.items.iter_mut().find(|item| item.setting == "vm.swappiness").unwrap();
    swappiness.status = Status::High;
    swappiness.remedy = Remedy::Sysctl { key: "vm.swappiness".to_string(), value: "10".to_string() };
    let outcomes = apply_report(&host, &report);
    let failed = outcomes.iter().find(|o| o.setting == "vm.swappiness").unwrap();
    assert!(matches!(failed.result, ApplyResult::Failed { .. }), "{failed:?}");
    assert_eq!(read(root, "proc/sys/vm/max_map_count"), "262144\n");

    assert!(host.write_sysctl("net.ipv4.no_such_knob", "1").is_err());
    assert!(!root.join("proc/sys/net/ipv4/no_such_knob").exists());
}

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    tune: TuneArgs,
}

fn run_cli(args: &[&str]) -> (anyhow::Result<i32>, String) {
    let cli = Cli::try_parse_from(std::iter::once("tune").chain(args.iter().copied())).unwrap();
    let mut out = Vec::new();
    let code = redrain_tuning::run_to(cli.tune, &mut out);
    (code, String::from_utf8(out).unwrap())
}

#[test]
fn cli_check_exit_code_follows_the_report_and_apply_rechecks() {
    let dir = tuned_host();
    let proc_root = dir.path().join("proc");
    let sys_root = dir.path().join("sys");
    let roots = ["--proc-root", proc_root.to_str().unwrap(), "--sys-root", sys_root.to_str().unwrap()];
    let mut check = vec!["check"];
    check.extend_from_slice(&roots);

    let (code, text) = run_cli(&check);
    assert_eq!(code.unwrap(), 0, "{text}");
    assert!(text.contains("target 100000 sessions on 2 cores"), "{text}");

    write(dir.path(), "proc/sys/net/core/somaxconn", "128\n");
    let (code, text) = run_cli(&check);
    assert_eq!(code.unwrap(), 1);
    assert!(text.contains("sysctl -w net.core.somaxconn=8192"), "{text}");

    let mut apply = check.clone();
    apply.push("--apply");
    let (code, text) = run_cli(&apply);
    assert_eq!(code.unwrap(), 0, "fixed by apply: {text}");
    assert!(text.contains("net.core.somaxconn: written \"8192\""), "{text}");
    assert_eq!(read(dir.path(), "proc/sys/net/core/somaxconn"), "8192\n");
}

#[test]
fn cli_json_carries_items_and_exit_code_and_sessions_change_the_target() {
    let dir = tuned_host();
    let proc_root = dir.path().join("proc");
    let sys_root = dir.path().join("sys");
    let (code, text) = run_cli(&[
        "check",
        "--json",
        "--sessions",
        "1000000",
        "--cores",
        "16",
        "--proc-root",
        proc_root.to_str().unwrap(),
        "--sys-root",
        sys_root.to_str().unwrap(),
    ]);
    assert_eq!(code.unwrap(), 1);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["exit_code"], 1);
    assert_eq!(json["target"]["sessions"], 1_000_000);
    assert_eq!(json["target"]["cores"], 16);
    let items = json["items"].as_array().unwrap();
    let nr_open = items.iter().find(|item| item["setting"] == "fs.nr_open").unwrap();
    assert_eq!(nr_open["status"], "low");
    assert_eq!(nr_open["recommended"], ">= 1310720");
    assert_eq!(nr_open["remedy"]["kind"], "sysctl");
    assert!(json.get("applied").is_none());
}

#[test]
fn cli_rejects_an_unknown_pid_and_zero_sessions() {
    let dir = tuned_host();
    let proc_root = dir.path().join("proc");
    let (code, _) = run_cli(&["check", "--pid", "4242", "--proc-root", proc_root.to_str().unwrap()]);
    assert!(code.unwrap_err().to_string().contains("no process 4242"));
    assert!(Cli::try_parse_from(["tune", "check", "--sessions", "0"]).is_err());
    assert!(Cli::try_parse_from(["tune", "check", "--cores", "0"]).is_err());
}

#[test]
fn cli_pid_reads_that_process_limits() {
    let dir = tuned_host();
    write(
        dir.path(),
        "proc/4242/limits",
        "Max open files            131072               131072               files\n\
         Max locked memory         8388608              8388608              bytes\n",
    );
    write(dir.path(), "proc/4242/status", "Cpus_allowed_list:\t0-3\n");
    let proc_root = dir.path().join("proc");
    let (code, text) = run_cli(&["check", "--json", "--pid", "4242", "--proc-root", proc_root.to_str().unwrap()]);
    assert_eq!(code.unwrap(), 1);
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["target"]["cores"], 4, "cores come from the pid's allowed CPUs");
    let items = json["items"].as_array().unwrap();
    let find = |name: &str| items.iter().find(|i| i["setting"] == name).unwrap().clone();
    assert_eq!(find("RLIMIT_NOFILE soft")["current"], "131072");
    assert_eq!(find("RLIMIT_NOFILE soft")["status"], "ok");
    assert_eq!(find("RLIMIT_MEMLOCK soft")["status"], "low");
}

#[test]
fn nic_queue_names_of_common_drivers_are_recognised() {
    use redrain_tuning::check::is_nic_queue_irq;
    let virtio_nic = vec![("eth0".to_string(), Some("virtio2".to_string()))];
    assert!(is_nic_queue_irq("virtio2-input.0", &virtio_nic));
    assert!(is_nic_queue_irq("virtio2-output.3", &virtio_nic));
    // Another virtio device (block, balloon, rng) is not the NIC.
    assert!(!is_nic_queue_irq("virtio1-req.0", &virtio_nic));
    assert!(!is_nic_queue_irq("virtio4-input", &virtio_nic));
    assert!(!is_nic_queue_irq("virtio3-input.0", &virtio_nic));
    // Without sysfs, virtio-net's numbered queue names are enough.
    assert!(is_nic_queue_irq("virtio3-input.0", &[]));
    assert!(!is_nic_queue_irq("virtio4-input", &[]));

    let pci_nic = vec![("ens5".to_string(), Some("0000:3b:00.0".to_string()))];
    assert!(is_nic_queue_irq("ens5-TxRx-7", &pci_nic));
    assert!(is_nic_queue_irq("ens5-rx-0", &pci_nic));
    assert!(is_nic_queue_irq("mlx5_comp12@pci:0000:3b:00.0", &pci_nic));
    assert!(is_nic_queue_irq("eth1-TxRx-0", &[]));
    assert!(!is_nic_queue_irq("ens50", &pci_nic));
    assert!(!is_nic_queue_irq("ttyS0", &pci_nic));
    assert!(!is_nic_queue_irq("nvme0q1", &pci_nic));
}

/// `key = value` lines of a sysctl.d file, comments skipped.
fn sysctl_conf_entries(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#') && !line.starts_with(';'))
        .map(|line| {
            let (key, value) = line.split_once('=').expect("key = value");
            (key.trim().to_string(), value.trim().to_string())
        })
        .collect()
}

#[test]
fn shipped_sysctl_conf_passes_the_check_for_its_stated_target() {
    let text = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/redrain.sysctl.conf")).unwrap();
    let entries = sysctl_conf_entries(&text);
    assert!(entries.len() >= 14, "{entries:?}");
    let dir = tuned_host();
    let host = Host::under(dir.path());
    for (key, value) in &entries {
        let path = host.sysctl_path(key);
        assert!(path.exists(), "{key} is not one the check knows");
        fs::write(path, format!("{value}\n")).unwrap();
    }
    let report = check_host(&host, &TARGET);
    for (key, _) in &entries {
        assert_eq!(item(&report, key).status, Status::Ok, "{key}");
    }
}

#[test]
fn shipped_limits_meet_the_check_for_100k_sessions() {
    let limits = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/redrain.limits.conf")).unwrap();
    let service = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/redrain.service")).unwrap();
    let nofile_needed = redrain_tuning::recommend::nofile_limit(&TARGET);
    let memlock_needed = redrain_tuning::recommend::memlock_bytes_min(&TARGET);
    for line in limits.lines().filter(|l| l.starts_with("redrain")) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let value: u64 = fields[3].parse().unwrap();
        match fields[2] {
            "nofile" => assert!(value >= nofile_needed, "{line}"),
            // limits.conf counts memlock in KiB.
            "memlock" => assert!(value * 1024 >= memlock_needed, "{line}"),
            other => panic!("unexpected item {other}"),
        }
    }
    assert!(service.contains("\nLimitNOFILE=1048576\n"));
    assert!(service.contains("\nLimitMEMLOCK=256M\n"));
    assert!(256 << 20 >= memlock_needed);
    assert!(service.contains("\nKillSignal=SIGTERM\n"));
    assert!(service.contains("\nUser=redrain\n"));
}

#[test]
fn cli_json_apply_lists_outcomes_and_the_rechecked_items() {
    let dir = tuned_host();
    write(dir.path(), "proc/sys/vm/max_map_count", "65530\n");
    fs::remove_file(dir.path().join("sys/kernel/mm/transparent_hugepage/enabled")).unwrap();
    let proc_root = dir.path().join("proc");
    let sys_root = dir.path().join("sys");
    let (code, text) = run_cli(&[
        "check",
        "--json",
        "--apply",
        "--proc-root",
        proc_root.to_str().unwrap(),
        "--sys-root",
        sys_root.to_str().unwrap(),
    ]);
    assert_eq!(code.unwrap(), 0, "{text}");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let applied = json["applied"].as_array().unwrap();
    assert_eq!(applied.len(), 1);
    assert_eq!(applied[0]["setting"], "vm.max_map_count");
    assert_eq!(applied[0]["result"], "written");
    assert_eq!(applied[0]["value"], "262144");
    let before = json["items"].as_array().unwrap();
    let after = json["after_apply"].as_array().unwrap();
    let status_of = |items: &Vec<serde_json::Value>, name: &str| {
        items.iter().find(|i| i["setting"] == name).unwrap()["status"].clone()
    };
    assert_eq!(status_of(before, "vm.max_map_count"), "low");
    assert_eq!(status_of(after, "vm.max_map_count"), "ok");
    assert_eq!(status_of(after, "transparent_hugepage/enabled"), "n/a");
    assert_eq!(json["exit_code"], 0);
}

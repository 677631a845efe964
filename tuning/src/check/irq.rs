//! NIC queue interrupts: which `/proc/interrupts` lines are NIC queues and which CPUs
//! each may interrupt (`/proc/irq/<n>/smp_affinity_list`).

use super::{not_applicable, Item, Remedy, Status};
use crate::host::{Host, ReadError};
use crate::parse;

/// Most NIC queue IRQs listed in the `current` column; the rest are counted.
const NIC_IRQS_LISTED_MAX: usize = 8;

/// Names of network interfaces (not `lo`) and the device each sits on (`virtio2`,
/// `0000:3b:00.0`), from `/sys/class/net`.
fn network_devices(host: &Host) -> Vec<(String, Option<String>)> {
    let class_net = host.sys_path("class/net");
    host.list_dir(&class_net)
        .into_iter()
        .filter(|name| name != "lo")
        .map(|name| {
            let device = std::fs::read_link(class_net.join(&name).join("device"))
                .ok()
                .and_then(|target| Some(target.file_name()?.to_str()?.to_string()));
            (name, device)
        })
        .collect()
}

/// Whether an interrupt handler name is a NIC queue. Drivers name queue vectors
/// `<iface>-TxRx-<n>` (Intel), `<iface>-rx-<n>`, `mlx5_comp<n>@pci:...` (Mellanox),
/// `<virtio dev>-input.<n>`/`-output.<n>` (virtio-net). virtio-rng's single queue is also
/// called `input`, but without the `.<n>` suffix, so the dot is what tells them apart.
pub fn is_nic_queue_irq(name: &str, devices: &[(String, Option<String>)]) -> bool {
    let virtio_net_queue = |rest: &str| {
        let suffix = rest.strip_prefix("input.").or_else(|| rest.strip_prefix("output."));
        suffix.is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    if name.contains("-TxRx-") || name.starts_with("mlx5_comp") || name.starts_with("mlx4-") {
        return true;
    }
    if let Some(rest) = name.strip_prefix("virtio") {
        if let Some((number, queue)) = rest.split_once('-') {
            if number.bytes().all(|b| b.is_ascii_digit()) && virtio_net_queue(queue) {
                // With sysfs we know which virtio devices are NICs; without it, the
                // input.N/output.N queue names are specific enough on their own.
                let device = format!("virtio{number}");
                let known: Vec<&String> = devices.iter().filter_map(|(_, d)| d.as_ref()).collect();
                return known.is_empty() || known.iter().any(|d| **d == device);
            }
        }
    }
    devices.iter().any(|(interface, _)| name.strip_prefix(interface.as_str()).is_some_and(|rest| rest.starts_with('-')))
}

pub(super) fn check_nic_irqs(host: &Host) -> Item {
    let setting = "NIC queue IRQ affinity";
    let recommended = "queues spread over cores".to_string();
    let command = "echo <cpus> > /proc/irq/<irq>/smp_affinity_list (with irqbalance stopped \
                   or told to skip those IRQs)"
        .to_string();
    let text = match host.read_text(&host.proc_path("interrupts")) {
        Ok(text) => text,
        Err(error) => return not_applicable(setting, recommended, command, error.to_string()),
    };
    let devices = network_devices(host);
    let mut queues: Vec<(u32, String, Result<Vec<u32>, ReadError>)> = Vec::new();
    for line in parse::parse_interrupts(&text) {
        if is_nic_queue_irq(&line.name, &devices) {
            let path = host.proc_path(&format!("irq/{}/smp_affinity_list", line.irq));
            let affinity = host.read_parsed(&path, parse::parse_cpu_list);
            queues.push((line.irq, line.name, affinity));
        }
    }
    if queues.is_empty() {
        return not_applicable(
            setting,
            recommended,
            command,
            "no NIC queue interrupts in /proc/interrupts (names like eth0-TxRx-0, \
             virtio0-input.0, mlx5_comp0)"
                .to_string(),
        );
    }
    let mut union: Vec<u32> =
        queues.iter().filter_map(|(_, _, affinity)| affinity.as_ref().ok()).flatten().copied().collect();
    union.sort_unstable();
    union.dedup();
    let host_cpus = super::cpu::cpu_numbers(host).len();
    let crowded = queues.len() >= 2 && union.len() == 1 && host_cpus > 1;
    let mut current: Vec<String> = queues
        .iter()
        .take(NIC_IRQS_LISTED_MAX)
        .map(|(irq, name, affinity)| {
            let cpus = match affinity {
                Ok(cpus) => parse::format_cpu_list(cpus),
                Err(_) => "?".to_string(),
            };
            format!("{irq} {name} -> {cpus}")
        })
        .collect();
    if queues.len() > NIC_IRQS_LISTED_MAX {
        current.push(format!("(+{} more)", queues.len() - NIC_IRQS_LISTED_MAX));
    }
    Item {
        setting: setting.to_string(),
        current: current.join(", "),
        recommended,
        status: if crowded { Status::Differs } else { Status::Info },
        apply_command: command,
        note: if crowded {
            "all NIC queues interrupt one CPU: that core does every core's packet work".to_string()
        } else {
            "either pin queue i to shard core i (RSS keeps a flow on one core) or keep NIC \
             IRQs on cores without shards"
                .to_string()
        },
        remedy: Remedy::Manual {
            why: "IRQ placement depends on the NIC's queue count and which cores run shards, \
                  and irqbalance would undo a one-off change; set it in the host's \
                  provisioning"
                .to_string(),
        },
    }
}

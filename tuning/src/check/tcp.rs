//! TCP items with more than one number: `tcp_mem` (pages for all sockets), `tcp_rmem` /
//! `tcp_wmem` (bytes per socket) and the ephemeral port range.

use super::{not_applicable, sysctl_command, sysctl_remedy, Item, Status};
use crate::host::Host;
use crate::parse;
use crate::recommend::{self, Target};

fn triple_text(values: &[u64; 3]) -> String {
    format!("{} {} {}", values[0], values[1], values[2])
}

pub(super) fn check_tcp_mem(host: &Host, target: &Target) -> Item {
    let key = "net.ipv4.tcp_mem";
    let want = recommend::tcp_mem_pages(target, host.page_size_bytes);
    let want_text = triple_text(&want);
    let recommended = format!(">= {want_text}");
    let command = sysctl_command(key, &want_text);
    let low_bytes = want[0].saturating_mul(host.page_size_bytes);
    let high_bytes = want[2].saturating_mul(host.page_size_bytes);
    let mut note = format!(
        "pages (x{} B); low = {} sessions x {} B (rmem+wmem floor) = {}, pressure x{}, \
         high x{} = {}",
        host.page_size_bytes,
        target.sessions,
        recommend::SOCKET_BUFFER_MIN_BYTES * 2,
        recommend::format_bytes(low_bytes),
        recommend::TCP_MEM_PRESSURE_FACTOR,
        recommend::TCP_MEM_HIGH_FACTOR,
        recommend::format_bytes(high_bytes),
    );
    if let Ok(mem_total_bytes) = host.read_parsed(&host.proc_path("meminfo"), parse::parse_mem_total_bytes) {
        let percent = high_bytes.saturating_mul(100) / mem_total_bytes.max(1);
        note.push_str(&format!("; high is {percent}% of {} RAM", recommend::format_bytes(mem_total_bytes)));
        if percent > recommend::TCP_MEM_RAM_PERCENT_WARN {
            note.push_str(" - too much: this host is small for the target");
        }
    }
    match host.read_parsed(&host.sysctl_path(key), parse::parse_triple) {
        Ok(current) => {
            let meets = current.iter().zip(want.iter()).all(|(have, need)| have >= need);
            Item {
                setting: key.to_string(),
                current: triple_text(&current),
                recommended,
                status: if meets { Status::Ok } else { Status::Low },
                apply_command: command,
                note,
                remedy: sysctl_remedy(key, &want_text),
            }
        }
        Err(error) => not_applicable(key, recommended, command, error.to_string()),
    }
}

pub(super) fn check_socket_buffers(host: &Host, key: &str) -> Item {
    let note_why = format!(
        "bytes per socket (floor, initial, max); with many mostly idle sessions a small \
         initial size bounds what peers can queue, max >= {} keeps bulk links fast",
        recommend::format_bytes(recommend::SOCKET_BUFFER_MAX_BYTES_MIN)
    );
    match host.read_parsed(&host.sysctl_path(key), parse::parse_triple) {
        Ok(current) => {
            let want = recommend::socket_buffer_triple(current[2]);
            let want_text = triple_text(&want);
            let status = if current[1] > want[1] {
                Status::High
            } else if current[0] < want[0] || current[2] < recommend::SOCKET_BUFFER_MAX_BYTES_MIN {
                Status::Low
            } else {
                Status::Ok
            };
            Item {
                setting: key.to_string(),
                current: triple_text(&current),
                recommended: want_text.clone(),
                status,
                apply_command: sysctl_command(key, &want_text),
                note: note_why,
                remedy: sysctl_remedy(key, &want_text),
            }
        }
        Err(error) => {
            let want_text = triple_text(&recommend::socket_buffer_triple(0));
            let command = sysctl_command(key, &want_text);
            not_applicable(key, want_text, command, error.to_string())
        }
    }
}

pub(super) fn check_port_range(host: &Host, target: &Target) -> Item {
    let key = "net.ipv4.ip_local_port_range";
    let (first, last) = recommend::LOCAL_PORT_RANGE_RECOMMENDED;
    let want_size = parse::port_range_size(first, last);
    let want_text = format!("{first} {last}");
    let command = sysctl_command(key, &want_text);
    match host.read_parsed(&host.sysctl_path(key), parse::parse_port_range) {
        Ok((current_first, current_last)) => {
            let size = parse::port_range_size(current_first, current_last);
            Item {
                setting: key.to_string(),
                current: format!("{current_first} {current_last}"),
                recommended: want_text.clone(),
                status: if size >= want_size { Status::Ok } else { Status::Low },
                apply_command: command,
                note: format!(
                    "{size} ephemeral ports; a loadgen opening {} sessions to one server \
                     ip:port needs {} source IPs (at {want_size} ports: {}); reserve \
                     redrain's listen ports with net.ipv4.ip_local_reserved_ports",
                    target.sessions,
                    recommend::loadgen_source_addresses(target.sessions, size),
                    recommend::loadgen_source_addresses(target.sessions, want_size),
                ),
                remedy: sysctl_remedy(key, &want_text),
            }
        }
        Err(error) => not_applicable(key, want_text, command, error.to_string()),
    }
}

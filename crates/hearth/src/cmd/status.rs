//! `hearth status`.

use hearth_client::Client;
use hearth_client::types::{HostResources, Status, ToolInfo};

#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: &Client, args: Args) -> anyhow::Result<()> {
    let status = client.status().await?;
    if args.json {
        return crate::output::print_json(&status);
    }
    print!("{}", render(&status));
    Ok(())
}

/// `2 CPUs (load 0.52 0.58 0.59), memory 18.6 of 23.4 GiB free, disk ...`.
fn resources(r: &HostResources) -> String {
    let gib = |bytes: u64| bytes as f64 / f64::from(1u32 << 30);
    format!(
        "{cpus} CPU{s} (load {l1:.2} {l5:.2} {l15:.2}), memory {mf:.1} of {mt:.1} GiB free, disk {df:.1} of {dt:.1} GiB free",
        cpus = r.cpus,
        s = if r.cpus == 1 { "" } else { "s" },
        l1 = r.load[0],
        l5 = r.load[1],
        l15 = r.load[2],
        mf = gib(r.memory_available_bytes),
        mt = gib(r.memory_total_bytes),
        df = gib(r.disk_available_bytes),
        dt = gib(r.disk_total_bytes),
    )
}

fn render(s: &Status) -> String {
    let tool = |t: &Option<ToolInfo>| match t {
        Some(t) => format!("{} ({})", t.path, t.version.as_deref().unwrap_or("version unknown")),
        None => "not found".to_owned(),
    };
    let kvm = match (s.host.kvm.present, s.host.kvm.accessible, s.host.kvm.usable) {
        (_, _, Some(true)) => "usable",
        (true, true, None) => "present (not yet boot-probed)",
        (true, false, _) => "present but not accessible",
        (true, true, Some(false)) => "present but not usable",
        (false, _, _) => "absent",
    };
    format!(
        "daemon      hearth {version}, up {uptime}\n\
         data dir    {data_dir}\n\
         host        {resources}\n\
         api         {socket}{tcp}\n\
         cluster     {cluster}\n\
         store       {backend} at {location}\n\
         revision    {revision} (history from {compacted})\n\
         kvm         {kvm}: {kvm_detail}\n\
         qemu        {qemu}\n\
         firecracker {firecracker}\n\
         machines    run on {default_backend} by default\n\
         apps        {ingress}\n\
         dns         {dns}\n\
         dashboard   {ui}\n",
        version = s.version,
        uptime = humantime::format_duration(std::time::Duration::from_secs(s.uptime_secs)),
        data_dir = s.data_dir,
        resources = s.host.resources.as_ref().map_or_else(|| "not readable".to_owned(), resources),
        socket = s.socket,
        tcp = s.tcp.as_deref().map(|t| format!(" and http://{t} (token)")).unwrap_or_default(),
        cluster = s.cluster.as_ref().map_or_else(|| "unknown".to_owned(), cluster),
        backend = s.store.backend,
        location = s.store.location,
        revision = s.store.revision,
        compacted = s.store.compacted_revision.max(1),
        kvm_detail = s.host.kvm.detail,
        qemu = tool(&s.host.qemu),
        firecracker = tool(&s.host.firecracker),
        default_backend = s.host.default_backend,
        ingress = s
            .ingress
            .as_deref()
            .map(|a| format!("http://NAME.localhost:{}", a.rsplit(':').next().unwrap_or("8080")))
            .unwrap_or_else(|| "no ingress".into()),
        dns = match (&s.dns.listen, &s.dns.problem) {
            (Some(addr), _) => format!("{addr} (udp and tcp): NAME.service.hearth, MACHINE.NETWORK.hearth"),
            (None, Some(problem)) => format!("off: {problem}"),
            (None, None) => "off".to_owned(),
        },
        ui = match (&s.ui.url, &s.ui.problem) {
            (Some(url), _) => format!("{url} (`hearth ui` prints a sign-in link)"),
            (None, Some(problem)) => format!("off: {problem}"),
            (None, None) => "off".to_owned(),
        },
    )
}

/// `cluster     node-1, leader, 1 of 3 hosts lost (`hearth host ls`)`.
fn cluster(c: &hearth_client::types::ClusterStatus) -> String {
    let role = match &c.leader {
        Some(leader) if *leader == c.host => "the leader".to_owned(),
        Some(leader) => format!("led by {leader}"),
        None => "no leader yet".to_owned(),
    };
    let hosts = match (c.hosts, c.lost) {
        (1, _) => "the only host".to_owned(),
        (n, 0) => format!("{n} hosts"),
        (n, lost) => format!("{lost} of {n} hosts lost"),
    };
    format!("host {}, {role}, {hosts} (`hearth host ls`)", c.host)
}

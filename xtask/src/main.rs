//! `cargo xtask <task>`: the one entry point for building the module, the
//! service, images, and for running the VM tests, the demo and benchmarks.

mod bench;
mod cleanroom;
mod cmd;
mod cross;
mod cross_rs;
mod deb;
mod image;
mod module;
mod pagesize;
mod scenarios;
mod setup;
mod soak;
mod test;
mod vm;
mod yocto;

use anyhow::{bail, Result};

const USAGE: &str = "\
usage: cargo xtask <task> [options]

tasks:
  test        host checks, module build, then every VM scenario
  demo        build and boot the appliance in QEMU, format, write, press the button
              (test, demo and cross-rs take --clean-room: run inside a fresh root
              that has only a new machine's packages; `test --clean-room` is what CI runs)
  vm          interactive shell in the test VM
  kmod        build usrbd.ko against the test kernel's headers; --kdir TREE [--arch arm64]
              [--defconfig NAME]: against a kernel source tree on disk (prepared first
              with --defconfig)
  cross       build service and module for aarch64 and armv7
  cross-rs    `cross build --release` for aarch64 and armv7 with Podman, and the module in that image
  deb         Debian packages: usrbd-dkms and usrbd (amd64, arm64, armhf), lintian
  image       build a flashable SD-card image (--board rpi3-64|rpi4-64)
  run-image   boot that image in QEMU raspi3b until the service serves
  bench       fio on usrbd, brd, null_blk, ublk and nbd in one VM; writes docs/benchmarks.md
  yocto-check oelint-adv (scarthgap, wrynose), kas files of both series, crate list and
              Cargo.lock vs scarthgap's cargo 1.75
  soak        long reliability scenarios (rel_*, USRBD_SOAK=1); --docs writes docs/reliability.md
";

fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let task = args.next().unwrap_or_default();
    let rest: Vec<String> = args.collect();
    if matches!(task.as_str(), "test" | "demo" | "cross-rs")
        && rest.iter().any(|a| a == "--clean-room")
    {
        let inner: Vec<String> = rest.into_iter().filter(|a| a != "--clean-room").collect();
        return cleanroom::run(&task, &inner);
    }
    match task.as_str() {
        cleanroom::INNER_TASK => cleanroom::inner(&rest),
        "test" => test::run(&rest),
        "demo" => test::demo(&rest),
        "vm" => test::vm(&rest),
        "kmod" => test::kmod(&rest),
        "cross" => cross::run(&rest),
        "cross-rs" => cross_rs::run(&rest),
        "deb" => deb::run(&rest),
        "image" => image::build(&rest),
        "run-image" => image::run(&rest),
        "bench" => bench::run(&rest),
        "soak" => soak::run(&rest),
        "yocto-check" => yocto::run(&rest),
        "" | "help" | "-h" | "--help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown task `{other}`\n{USAGE}"),
    }
}

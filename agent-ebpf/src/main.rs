//! kernelsight's kernel side. Each module holds the programs for one kind of evidence:
//! `tcp` (retransmits and RSTs), `owner` (who owns a socket, learnt in process context).
#![no_std]
#![no_main]

mod maps;
mod owner;
mod runq;
mod tcp;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

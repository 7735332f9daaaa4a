//! The 16550 serial port on 0x3f8 (vm-superio), writing what the guest prints to a file or
//! stdout. No interrupts: the guests write the transmit register and never wait.

use serde::{Deserialize, Serialize};
use std::io::Write;
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};

/// The serial port's interrupt line: not wired (the guests poll).
pub struct NoIrq;

impl Trigger for NoIrq {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        Ok(())
    }
}

/// The console device.
pub struct Console {
    serial: Serial<NoIrq, NoEvents, Box<dyn Write + Send>>,
}

/// The serial port's registers, as a VM snapshot keeps them.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ConsoleState {
    regs: [u8; 9],
    in_buffer: Vec<u8>,
}

impl Console {
    /// A console writing to `out`.
    pub fn new(out: Box<dyn Write + Send>) -> Console {
        Console {
            serial: Serial::new(NoIrq, out),
        }
    }

    /// A console restored from `s`, writing to `out`.
    pub fn from_state(s: &ConsoleState, out: Box<dyn Write + Send>) -> Console {
        let st = SerialState {
            baud_divisor_low: s.regs[0],
            baud_divisor_high: s.regs[1],
            interrupt_enable: s.regs[2],
            interrupt_identification: s.regs[3],
            line_control: s.regs[4],
            line_status: s.regs[5],
            modem_control: s.regs[6],
            modem_status: s.regs[7],
            scratch: s.regs[8],
            in_buffer: s.in_buffer.iter().copied().take(16).collect(),
        };
        match Serial::from_state(&st, NoIrq, NoEvents, out) {
            Ok(serial) => Console { serial },
            // a state the device refuses (a hostile snapshot): a fresh port
            Err(_) => unreachable!("vm-superio accepts any register values"),
        }
    }

    /// The registers.
    pub fn state(&self) -> ConsoleState {
        let s = self.serial.state();
        ConsoleState {
            regs: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer,
        }
    }

    /// A guest write to port `0x3f8 + offset`.
    pub fn write(&mut self, offset: u8, v: u8) {
        let _ = self.serial.write(offset, v);
    }

    /// A guest read of port `0x3f8 + offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        self.serial.read(offset)
    }

    /// Flush the output.
    pub fn flush(&mut self) {
        let _ = self.serial.writer_mut().flush();
    }
}

"""The server's terminals: one login shell on a pty each, shared by every websocket to it.

A terminal outlives its websockets (a reload reattaches and gets the recent output again) and
ends with its shell, a DELETE, the idle timeout or the server. Output is read on the loop
without blocking; what is kept for it is bounded (the scrollback drops its oldest text, a slow
websocket stops the pty being read until it catches up).
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import logging
import os
import re
import signal
import subprocess
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import BadRequest, Conflict, NotFound
from ..isotime import isoformat
from ..procfs import signal_group
from . import CONFIG_ENV

log = logging.getLogger("minihub.terminals")

SCROLLBACK = 256 * 1024  # characters kept for a websocket that (re)attaches
READ_CHUNK = 64 * 1024
CLIENT_HIGH = 256 * 1024  # characters queued for one websocket before reading stops
MAX_INPUT = 1 << 20  # bytes waiting for a shell that does not read its input; beyond: dropped
DRAIN_AT_EXIT = 1 << 20  # bytes read after the shell exits (a background job may go on)
KILL_GRACE = 2.0  # seconds between SIGHUP and SIGKILL
NAME = re.compile(r"\w{1,100}")
TERM = "xterm-256color"
# The shell becomes the session leader (start_new_session), then opens the pty's name, which
# makes it the controlling terminal (job control, ^C); Popen has no portable way to ask for one.
CTTY_SH = 'exec <>"$1" >&0 2>&0 || exit 127; shift; exec "$@"'


@dataclass(eq=False)
class Client:
    """One websocket's side of a terminal: output waiting to be sent, the size it asked for."""

    queue: deque[str] = field(default_factory=deque)
    queued: int = 0
    size: tuple[int, int, int, int] | None = None  # rows, cols, height_px, width_px
    ended: bool = False  # the terminal is gone: send what is queued, then disconnect
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)

    def put(self, text: str) -> None:
        self.queue.append(text)
        self.queued += len(text)
        self.wakeup.set()

    def take(self) -> str:
        text = "".join(self.queue)
        self.queue.clear()
        self.queued = 0
        return text


class Terminal:
    """A shell on a pty; `clients` are the websockets attached to it."""

    def __init__(self, name: str, proc: subprocess.Popen[bytes], fd: int) -> None:
        self.name = name
        self.proc = proc
        self.pid = proc.pid
        self.fd = fd  # the pty's master side, non-blocking
        self.last_activity = time.time()
        self.clients: set[Client] = set()
        self.scrollback: deque[str] = deque()
        self.kept = 0
        self.ended = asyncio.Event()  # the shell has exited (it is reaped in _finish)
        self.closed = False
        self.killing = False  # kill() reaps the shell itself, after its last signal
        self.on_closed: list[Callable[[Terminal], None]] = []
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._input = bytearray()
        self._reading = False
        self._writing = False
        self._kill: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()
        self._pidfd = os.pidfd_open(self.pid)
        self._loop.add_reader(self._pidfd, self._exited)
        self._read_on()

    def model(self) -> dict[str, str]:
        return {"name": self.name, "last_activity": isoformat(self.last_activity)}

    def touch(self) -> None:
        self.last_activity = time.time()

    # --- output --------------------------------------------------------------------------

    def _read_on(self) -> None:
        if not self._reading and not self.closed:
            self._loop.add_reader(self.fd, self._readable)
            self._reading = True

    def _read_off(self) -> None:
        if self._reading:
            self._loop.remove_reader(self.fd)
            self._reading = False

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, READ_CHUNK)
        except BlockingIOError:
            return
        except OSError:  # EIO: nothing holds the pty's other side any more
            data = b""
        if not data:
            self._read_off()
            return
        self._output(self._decoder.decode(data))

    def _output(self, text: str) -> None:
        if not text:
            return
        self.touch()
        self._keep(text)
        for client in self.clients:
            client.put(text)
            if client.queued > CLIENT_HIGH:
                self._read_off()  # the shell blocks on a full pty until this client catches up

    def _keep(self, text: str) -> None:
        self.scrollback.append(text)
        self.kept += len(text)
        while self.kept > SCROLLBACK:
            over = self.kept - SCROLLBACK
            oldest = self.scrollback[0]
            if len(oldest) <= over:
                self.scrollback.popleft()
                self.kept -= len(oldest)
                continue
            # Start the replay at a line boundary where there is one nearby.
            cut = oldest.find("\n", over, over + 256)
            cut = over if cut < 0 else cut + 1
            self.scrollback[0] = oldest[cut:]
            self.kept -= cut

    def sent(self) -> None:
        """A client's queue was sent: read again once every client has room."""
        if not self.ended.is_set() and all(c.queued <= CLIENT_HIGH for c in self.clients):
            self._read_on()

    # --- clients -------------------------------------------------------------------------

    def attach(self) -> Client:
        client = Client()
        for text in self.scrollback:
            client.put(text)
        self.clients.add(client)
        if self.closed:
            client.ended = True
        return client

    def detach(self, client: Client) -> None:
        self.clients.discard(client)
        self._fit()
        self.sent()

    def resize(self, client: Client, size: tuple[int, int, int, int]) -> None:
        client.size = size
        self._fit()

    def _fit(self) -> None:
        """As terminado: the smallest size any attached websocket asked for."""
        sizes = [c.size for c in self.clients if c.size is not None]
        if not sizes or self.closed:
            return
        rows = min(s[0] for s in sizes)
        cols = min(s[1] for s in sizes)
        px = next(((s[2], s[3]) for s in sizes if (s[0], s[1]) == (rows, cols)), (0, 0))
        set_winsize(self.fd, rows, cols, px[0], px[1])

    # --- input ---------------------------------------------------------------------------

    def write(self, text: str) -> None:
        if self.closed:
            return
        self.touch()
        data = text.encode("utf-8", "replace")  # JSON may carry lone surrogates
        room = MAX_INPUT - len(self._input)
        if len(data) > room:
            log.warning("terminal %s: input dropped (the shell is not reading it)", self.name)
            data = data[: max(room, 0)]
        self._input += data
        self._flush()

    def _flush(self) -> None:
        while self._input and not self.closed:
            try:
                n = os.write(self.fd, self._input)
            except BlockingIOError:
                break
            except OSError:
                self._input.clear()
                break
            del self._input[:n]
        want = bool(self._input) and not self.closed
        if want and not self._writing:
            self._loop.add_writer(self.fd, self._flush)
        elif not want and self._writing:
            self._loop.remove_writer(self.fd)
        self._writing = want

    # --- the end -------------------------------------------------------------------------

    def _exited(self) -> None:
        self._loop.remove_reader(self._pidfd)
        self.ended.set()
        if not self.closed and not self.killing:
            self._finish()

    def _finish(self) -> None:
        """The shell is gone: pass on its last output, reap it, tell the websockets."""
        drained = 0
        while drained < DRAIN_AT_EXIT:
            try:
                data = os.read(self.fd, READ_CHUNK)
            except OSError:
                break
            if not data:
                break
            drained += len(data)
            self._output(self._decoder.decode(data))
        self._output(self._decoder.decode(b"", final=True))
        self.closed = True
        self._read_off()
        if self._writing:
            self._loop.remove_writer(self.fd)
            self._writing = False
        self._input.clear()
        self.proc.poll()  # reaps: the pid (and group, session) may be reused from now on
        with contextlib.suppress(OSError):
            self._loop.remove_reader(self._pidfd)
            os.close(self._pidfd)
        os.close(self.fd)
        for client in self.clients:
            client.ended = True
            client.wakeup.set()
        for hook in self.on_closed:
            hook(self)
        log.info("terminal %s ended (status %s)", self.name, self.proc.returncode)

    async def kill(self) -> None:
        """SIGHUP to every process group of the shell's session, SIGKILL after KILL_GRACE.

        The shell is reaped only after the SIGKILL, so until then its pid, group and session
        cannot be anybody else's. Callers at once (a DELETE and the culler) wait for one kill."""
        if self.closed:
            return
        if self._kill is None:
            self._kill = asyncio.ensure_future(self._kill_session())
        await asyncio.shield(self._kill)

    async def _kill_session(self) -> None:
        self.killing = True
        # After the SIGHUP, whatever is left of the session (the shell's jobs) gets SIGKILL.
        for sig in (signal.SIGHUP, signal.SIGKILL):
            groups = await asyncio.to_thread(session_groups, self.pid)
            for pgid in groups | {self.pid}:
                signal_group(pgid, sig)
                if sig == signal.SIGHUP:
                    signal_group(pgid, signal.SIGCONT)  # a stopped job wakes to its SIGHUP
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ended.wait(), KILL_GRACE)
        self._finish()


class TerminalManager:
    """All terminals of this server, named "1", "2", ... as jupyter_server names them."""

    def __init__(self, root_dir: str, idle_timeout: int = 0) -> None:
        self.root_dir = root_dir
        self.idle_timeout = idle_timeout
        self.terminals: dict[str, Terminal] = {}
        self._starting: set[str] = set()
        self._shell: str | None = None
        self._culler: asyncio.Task[None] | None = None

    def get(self, name: str) -> Terminal:
        term = self.terminals.get(name)
        if term is None:
            raise NotFound(f"Terminal not found: {name}")
        return term

    def models(self) -> list[dict[str, str]]:
        return [t.model() for t in self.terminals.values()]

    def last_activity(self) -> float | None:
        times = [t.last_activity for t in self.terminals.values()]
        return max(times) if times else None

    async def create(self, name: str | None = None, cwd: str | None = None) -> Terminal:
        if name is not None and not NAME.fullmatch(name):
            raise BadRequest("A terminal name is 1 to 100 letters, digits or underscores")
        name = name or self._next_name()
        if name in self.terminals or name in self._starting:
            raise Conflict(f"Terminal {name} already exists")
        self._starting.add(name)
        try:
            proc, fd = await asyncio.to_thread(self._spawn, cwd)
            term = Terminal(name, proc, fd)
        finally:
            self._starting.discard(name)
        term.on_closed.append(self._forget)
        self.terminals[name] = term
        self._start_culler()
        log.info("terminal %s started (pid %d)", name, term.pid)
        return term

    def _next_name(self) -> str:
        n = 1
        while str(n) in self.terminals or str(n) in self._starting:
            n += 1
        return str(n)

    def _spawn(self, cwd: str | None) -> tuple[subprocess.Popen[bytes], int]:
        """In a thread: the shell's lookup (NSS), the cwd check and the fork."""
        master, slave = os.openpty()
        try:
            set_winsize(master, 24, 80, 0, 0)
            argv = ["/bin/sh", "-c", CTTY_SH, "minihub-terminal", os.ttyname(slave)]
            proc = subprocess.Popen(
                [*argv, self.shell(), "-l"],
                stdin=slave,
                stdout=slave,
                stderr=slave,
                cwd=self._cwd(cwd),
                env=self._env(),
                start_new_session=True,
                close_fds=True,
            )
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return proc, master

    def shell(self) -> str:
        """The user's login shell (a blocking NSS lookup: call it in a thread)."""
        if self._shell is None:
            import pwd

            try:
                shell = pwd.getpwuid(os.getuid()).pw_shell
            except KeyError:
                shell = ""
            for candidate in (shell, os.environ.get("SHELL", ""), "/bin/sh"):
                if candidate and os.access(candidate, os.X_OK):
                    self._shell = candidate
                    break
            else:
                self._shell = "/bin/sh"
        return self._shell

    def _cwd(self, cwd: str | None) -> str:
        """As jupyter_server: a relative cwd is below the notebook dir; one that is not a
        directory leaves the terminal in the notebook dir."""
        if cwd and "\x00" not in cwd:
            path = os.path.join(self.root_dir, os.path.expanduser(cwd))
            if os.path.isdir(path):
                return path
        return self.root_dir

    def _env(self) -> dict[str, str]:
        """The kernels' environment (the server's, which holds no secret), for a terminal."""
        env = dict(os.environ)
        env.pop(CONFIG_ENV, None)
        env["TERM"] = TERM
        env.pop("COLUMNS", None)
        env.pop("LINES", None)
        env["JUPYTER_SERVER_ROOT"] = self.root_dir
        return env

    def _forget(self, term: Terminal) -> None:
        if self.terminals.get(term.name) is term:
            del self.terminals[term.name]

    async def terminate(self, name: str) -> None:
        term = self.get(name)
        await term.kill()

    async def close(self) -> None:
        if self._culler is not None:
            self._culler.cancel()
        if self.terminals:
            log.info("shutting down %d terminal(s)", len(self.terminals))
        terms = list(self.terminals.values())
        await asyncio.gather(*(t.kill() for t in terms), return_exceptions=True)

    # --- culling ---------------------------------------------------------------------------

    def _start_culler(self) -> None:
        if self.idle_timeout > 0 and self._culler is None:
            self._culler = asyncio.create_task(self._cull_loop())

    async def _cull_loop(self) -> None:
        every = max(1.0, min(60.0, self.idle_timeout / 2))
        while True:
            await asyncio.sleep(every)
            for term in list(self.terminals.values()):
                idle_for = time.time() - term.last_activity
                if idle_for <= self.idle_timeout:
                    continue
                log.info("culling terminal %s: idle for %d s", term.name, int(idle_for))
                try:
                    await term.kill()
                except Exception:  # the next round tries again; the culler must not die
                    log.exception("culling terminal %s failed", term.name)


def set_winsize(fd: int, rows: int, cols: int, height_px: int, width_px: int) -> None:
    import fcntl
    import struct
    import termios

    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, width_px, height_px))


def session_groups(sid: int) -> set[int]:
    """The process groups of the processes in session `sid` (read from /proc)."""
    groups: set[int] = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                text = f.read().decode(errors="replace")
        except OSError:
            continue
        fields = text[text.rfind(")") + 2 :].split()
        if len(fields) > 3 and fields[3] == str(sid):
            groups.add(int(fields[2]))
    return groups

"""Connections and servers over stream sockets: create_connection, create_server, their Unix
variants and connect_accepted_socket, producing `SocketTransport`s and `asyncio.Server`s.
"""

import collections.abc
import errno
import functools
import itertools
import os
import socket
import ssl as ssl_module
import stat
import weakref
from asyncio import exceptions, staggered, tasks, trsock
from asyncio.log import logger

from . import _compat
from ._transports import SocketTransport

# asyncio's ACCEPT_RETRY_DELAY: after EMFILE and friends, stop accepting for this long.
_ACCEPT_RETRY_DELAY = 1
_OUT_OF_RESOURCES = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


class NetworkMixin:
    @property
    def _transports(self):
        transports = self.__dict__.get("_transports_by_fd")
        if transports is None:
            transports = self.__dict__["_transports_by_fd"] = weakref.WeakValueDictionary()
        return transports

    def _ensure_fd_no_transport(self, fd):
        fileno = fd
        if not isinstance(fileno, int):
            try:
                fileno = int(fileno.fileno())
            except (AttributeError, TypeError, ValueError):
                raise ValueError(f"Invalid file object: {fd!r}") from None
        transport = self._transports.get(fileno)
        if transport is not None and not transport.is_closing():
            raise RuntimeError(f"File descriptor {fd!r} is used by transport {transport!r}")

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    async def _create_connection_transport(
        self,
        sock,
        protocol_factory,
        ssl=None,
        server_hostname=None,
        server_side=False,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        sock.setblocking(False)
        protocol = protocol_factory()
        waiter = self.create_future()
        if ssl:
            transport = self._make_ssl_transport(
                sock,
                protocol,
                None if isinstance(ssl, bool) else ssl,
                waiter,
                server_side=server_side,
                server_hostname=server_hostname,
                ssl_handshake_timeout=ssl_handshake_timeout,
                ssl_shutdown_timeout=ssl_shutdown_timeout,
            )
        else:
            transport = self._make_socket_transport(sock, protocol, waiter)
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol

    async def _resolve(self, address, *, family=0, type=socket.SOCK_STREAM, proto=0, flags=0):
        host, port = address[:2]
        try:
            # A literal address resolves without touching DNS, so it is done inline.
            numeric = flags | socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
            return socket.getaddrinfo(host, port, family, type, proto, numeric)
        except (socket.gaierror, UnicodeError, TypeError):
            return await self.getaddrinfo(
                host, port, family=family, type=type, proto=proto, flags=flags
            )

    async def create_connection(
        self,
        protocol_factory,
        host=None,
        port=None,
        *,
        ssl=None,
        family=0,
        proto=0,
        flags=0,
        sock=None,
        local_addr=None,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        happy_eyeballs_delay=None,
        interleave=None,
        all_errors=False,
    ):
        if server_hostname is not None and not ssl:
            raise ValueError("server_hostname is only meaningful with ssl")
        if server_hostname is None and ssl:
            # The host is the name to verify; '' turns SNI and the check off.
            if not host:
                raise ValueError("You must set server_hostname when using ssl without a host")
            server_hostname = host
        _check_tls_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _check_ssl_socket(sock)
        if happy_eyeballs_delay is not None and interleave is None:
            interleave = 1  # happy eyeballs alternates address families by default

        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            infos = await self._resolve((host, port), family=family, proto=proto, flags=flags)
            if not infos:
                raise OSError("getaddrinfo() returned empty list")
            local_infos = None
            if local_addr is not None:
                local_infos = await self._resolve(
                    local_addr, family=family, proto=proto, flags=flags
                )
                if not local_infos:
                    raise OSError("getaddrinfo() returned empty list")
            if interleave:
                infos = _interleave_by_family(infos, interleave)
            attempts = []
            sock = None
            if happy_eyeballs_delay is None:
                for info in infos:
                    try:
                        sock = await self._connect_sock(attempts, info, local_infos)
                        break
                    except OSError:
                        continue
            else:
                sock, _, _ = await staggered.staggered_race(
                    (
                        functools.partial(self._connect_sock, attempts, info, local_infos)
                        for info in infos
                    ),
                    happy_eyeballs_delay,
                    loop=self,
                )
            if sock is None:
                raise _connect_error([exc for sub in attempts for exc in sub], all_errors)
        else:
            if sock is None:
                raise ValueError("host and port was not specified and no sock specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        return await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def _connect_sock(self, attempts, addr_info, local_infos=None):
        """Create, bind and connect one socket; its errors go to `attempts`."""
        errors = []
        attempts.append(errors)
        family, type_, proto, _, address = addr_info
        sock = None
        try:
            sock = socket.socket(family=family, type=type_, proto=proto)
            sock.setblocking(False)
            if local_infos is not None:
                for local_family, _, _, _, local_address in local_infos:
                    if local_family != family:
                        continue
                    try:
                        sock.bind(local_address)
                        break
                    except OSError as exc:
                        errors.append(
                            OSError(
                                exc.errno,
                                f"error while attempting to bind on address "
                                f"{local_address!r}: {exc.strerror.lower()}",
                            )
                        )
                else:
                    if errors:
                        raise errors.pop()
                    raise OSError(f"no matching local address with {family=} found")
            await self.sock_connect(sock, address)
            return sock
        except OSError as exc:
            errors.append(exc)
            if sock is not None:
                sock.close()
            raise
        except BaseException:
            if sock is not None:
                sock.close()
            raise

    async def create_server(
        self,
        protocol_factory,
        host=None,
        port=None,
        *,
        family=socket.AF_UNSPEC,
        flags=socket.AI_PASSIVE,
        sock=None,
        backlog=100,
        ssl=None,
        reuse_address=None,
        reuse_port=None,
        keep_alive=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        start_serving=True,
    ):
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        # asyncio's create_server tests `ssl is None` where its other methods test `not ssl`.
        _check_tls_timeouts(ssl is not None, ssl_handshake_timeout, ssl_shutdown_timeout)
        if sock is not None:
            _check_ssl_socket(sock)
        if host is not None or port is not None:
            if sock is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            if reuse_address is None:
                reuse_address = True
            sockets = await self._bind_server_sockets(
                host, port, family, flags, reuse_address, reuse_port, keep_alive
            )
        else:
            if sock is None:
                raise ValueError("Neither host/port nor sock were specified")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A Stream Socket was expected, got {sock!r}")
            sockets = [sock]
        tls = (ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        return await self._serve(sockets, protocol_factory, backlog, start_serving, tls)

    async def _bind_server_sockets(
        self, host, port, family, flags, reuse_address, reuse_port, keep_alive
    ):
        if host == "":
            hosts = [None]
        elif isinstance(host, str) or not isinstance(host, collections.abc.Iterable):
            hosts = [host]
        else:
            hosts = host
        lookups = [self._resolve((h, port), family=family, flags=flags) for h in hosts]
        infos = set(itertools.chain.from_iterable(await tasks.gather(*lookups)))
        sockets = []
        try:
            for af, socktype, proto, _, address in infos:
                try:
                    sock = socket.socket(af, socktype, proto)
                except OSError:
                    continue  # a family/type this host cannot make
                sockets.append(sock)
                if reuse_address:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, True)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if keep_alive:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
                if af == socket.AF_INET6:
                    # One socket per family, as asyncio: no dual-stack listening.
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, True)
                try:
                    sock.bind(address)
                except OSError as err:
                    raise OSError(
                        err.errno,
                        f"error while attempting to bind on address {address!r}: "
                        f"{err.strerror.lower()}",
                    ) from None
        except BaseException:
            for sock in sockets:
                sock.close()
            raise
        return sockets

    async def _serve(self, sockets, protocol_factory, backlog, start_serving, tls):
        """`tls` is `(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)`."""
        for sock in sockets:
            sock.setblocking(False)
        server = _compat.new_server(self, sockets, protocol_factory, backlog, *tls)
        if start_serving:
            server._start_serving()
            # One iteration, so the listening sockets are registered before we return.
            await tasks.sleep(0)
        return server

    async def create_unix_connection(
        self,
        protocol_factory,
        path=None,
        *,
        ssl=None,
        sock=None,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        if ssl:
            if server_hostname is None:
                raise ValueError("you have to pass server_hostname when using ssl")
        else:
            if server_hostname is not None:
                raise ValueError("server_hostname is only meaningful with ssl")
            _check_tls_timeouts(False, ssl_handshake_timeout, ssl_shutdown_timeout)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, 0)
            try:
                sock.setblocking(False)
                await self.sock_connect(sock, path)
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("no path and sock were specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
            sock.setblocking(False)
        return await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    async def create_unix_server(
        self,
        protocol_factory,
        path=None,
        *,
        sock=None,
        backlog=100,
        ssl=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
        start_serving=True,
        cleanup_socket=True,
    ):
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        _check_tls_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        if path is not None:
            if sock is not None:
                raise ValueError("path and sock can not be specified at the same time")
            path = os.fspath(path)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            if path[0] not in (0, "\x00"):  # not an abstract-namespace path
                _remove_stale_socket(path)
            try:
                sock.bind(path)
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    raise OSError(errno.EADDRINUSE, f"Address {path!r} is already in use") from None
                raise
            except BaseException:
                sock.close()
                raise
        else:
            if sock is None:
                raise ValueError("path was not specified, and no sock specified")
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_STREAM:
                raise ValueError(f"A UNIX Domain Stream Socket was expected, got {sock!r}")
        if cleanup_socket and _compat.PY313:
            path = sock.getsockname()
            if isinstance(path, str) and path and path[0] != "\x00":
                try:
                    self._unix_server_sockets[sock] = os.stat(path).st_ino
                except FileNotFoundError:
                    pass
        tls = (ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        return await self._serve([sock], protocol_factory, backlog, start_serving, tls)

    @property
    def _unix_server_sockets(self):
        return self.__dict__.setdefault("_unix_server_sockets_by_sock", {})

    async def connect_accepted_socket(
        self,
        protocol_factory,
        sock,
        *,
        ssl=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        if sock.type != socket.SOCK_STREAM:
            raise ValueError(f"A Stream Socket was expected, got {sock!r}")
        _check_tls_timeouts(ssl, ssl_handshake_timeout, ssl_shutdown_timeout)
        _check_ssl_socket(sock)
        return await self._create_connection_transport(
            sock,
            protocol_factory,
            ssl,
            "",
            server_side=True,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )

    # -- the loop side of asyncio.Server -------------------------------------------------

    def _start_serving(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        tls = (sslcontext, ssl_handshake_timeout, ssl_shutdown_timeout)
        self._add_reader(
            sock.fileno(), self._accept_connection, protocol_factory, sock, server, backlog, tls
        )

    def _accept_connection(self, protocol_factory, sock, server, backlog, tls):
        # Accept up to `backlog` connections per readiness event, as asyncio does.
        for _ in range(backlog):
            try:
                conn, address = sock.accept()
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno not in _OUT_OF_RESOURCES:
                    raise
                # Out of fds or memory: say so, stop accepting for a while, then resume.
                self.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": trsock.TransportSocket(sock),
                    }
                )
                self._remove_reader(sock.fileno())
                self.call_later(
                    _ACCEPT_RETRY_DELAY,
                    self._start_serving,
                    protocol_factory,
                    sock,
                    tls[0],
                    server,
                    backlog,
                    *tls[1:],
                )
                return
            self.create_task(
                self._accept_connection2(protocol_factory, conn, {"peername": address}, server, tls)
            )

    async def _accept_connection2(self, protocol_factory, conn, extra, server, tls):
        protocol = None
        transport = None
        sslcontext, ssl_handshake_timeout, ssl_shutdown_timeout = tls
        try:
            protocol = protocol_factory()
            waiter = self.create_future()
            if sslcontext:
                transport = self._make_ssl_transport(
                    conn,
                    protocol,
                    sslcontext,
                    waiter,
                    server_side=True,
                    extra=extra,
                    server=server,
                    ssl_handshake_timeout=ssl_handshake_timeout,
                    ssl_shutdown_timeout=ssl_shutdown_timeout,
                )
            else:
                transport = self._make_socket_transport(
                    conn, protocol, waiter=waiter, extra=extra, server=server
                )
            try:
                await waiter
            except BaseException:
                transport.close()
                raise
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            if transport is None:
                conn.close()  # the protocol factory failed: nobody else owns the socket
            # asyncio reports these only in debug mode; oxio also reports a failing protocol
            # factory or handshake (not a peer's I/O error, not a cancelled server) always.
            if self.get_debug() or not isinstance(exc, (OSError, exceptions.CancelledError)):
                context = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                if transport is not None:
                    context["transport"] = transport
                self.call_exception_handler(context)

    def _stop_serving(self, sock):
        self._remove_reader(sock.fileno())
        inode = self._unix_server_sockets.pop(sock, None)
        if inode is not None:
            _cleanup_unix_socket(sock, inode)
        sock.close()


def _check_tls_timeouts(with_tls, ssl_handshake_timeout, ssl_shutdown_timeout):
    """asyncio's checks: the TLS timeouts mean nothing without TLS."""
    if ssl_handshake_timeout is not None and not with_tls:
        raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
    if ssl_shutdown_timeout is not None and not with_tls:
        raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")


def _check_ssl_socket(sock):
    if isinstance(sock, ssl_module.SSLSocket):
        raise TypeError("Socket cannot be of type SSLSocket")


def _remove_stale_socket(path):
    """Removes a socket file left behind by an earlier server, as asyncio does."""
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.remove(path)
    except FileNotFoundError:
        pass
    except OSError as err:
        logger.error("Unable to check or remove stale UNIX socket %r: %r", path, err)


def _cleanup_unix_socket(sock, inode):
    path = sock.getsockname()
    try:
        if os.stat(path).st_ino == inode:
            os.unlink(path)
    except (FileNotFoundError, OSError):
        pass


def _interleave_by_family(infos, first_family_count=1):
    """RFC 8305 address ordering: alternate families, starting with the first one seen."""
    by_family = collections.OrderedDict()
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    lists = list(by_family.values())
    ordered = []
    if first_family_count > 1:
        ordered.extend(lists[0][: first_family_count - 1])
        lists[0] = lists[0][first_family_count - 1 :]
    for group in itertools.zip_longest(*lists):
        ordered.extend(info for info in group if info is not None)
    return ordered


def _connect_error(exceptions, all_errors):
    if all_errors and _compat.PY312:
        return ExceptionGroup("create_connection failed", exceptions)
    if len(exceptions) == 1:
        return exceptions[0]
    model = str(exceptions[0])
    if all(str(exc) == model for exc in exceptions):
        return exceptions[0]
    return OSError("Multiple exceptions: {}".format(", ".join(str(exc) for exc in exceptions)))

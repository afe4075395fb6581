"""The Win32 calls of the Windows implementation (``_windows.Win32Api``), through ctypes.

``Win32`` takes its libraries as arguments (``load`` gives it kernel32, advapi32 and
``msvcrt.locking`` on Windows), so that the unit tests run every call sequence here,
structures and flags included, against recording doubles of those libraries on any
machine; ``mypy --platform win32`` checks ``load``. Structures use fixed-width ctypes
(``c_uint32`` for a DWORD): ``ctypes.wintypes`` sizes differ off Windows.
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
from typing import Any, Callable, Optional

# access rights, error codes, wait results (winnt.h, winerror.h)
PROCESS_TERMINATE = 0x0001
PROCESS_SET_QUOTA = 0x0100
PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
SYNCHRONIZE = 0x00100000
THREAD_SUSPEND_RESUME = 0x0002
TOKEN_QUERY = 0x0008
FILE_READ_ATTRIBUTES = 0x0080
ERROR_ACCESS_DENIED = 5
ERROR_INVALID_PARAMETER = 87
WAIT_TIMEOUT = 0x102

# job objects
JOB_OBJECT_EXTENDED_LIMIT_INFORMATION = 9
JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE = 0x2000

# files and security
FILE_SHARE_ALL = 0x7  # read | write | delete: never in the registry's way
OPEN_EXISTING = 3
FILE_FLAG_BACKUP_SEMANTICS = 0x02000000  # (also opens a folder)
FILE_BASIC_INFO_CLASS = 0
SE_FILE_OBJECT = 1
DACL_SECURITY_INFORMATION = 0x00000004
PROTECTED_DACL_SECURITY_INFORMATION = 0x80000000  # inherit nothing from the folder
SDDL_REVISION_1 = 1
TOKEN_USER_CLASS = 1
TH32CS_SNAPTHREAD = 0x00000004
TH32CS_SNAPPROCESS = 0x00000002
INVALID_HANDLE_VALUE = ctypes.c_void_p(-1).value
SIGBREAK = 21

# TCP tables (iphlpapi.h), the Service Control Manager (winsvc.h)
AF_INET, AF_INET6 = 2, 23
TCP_TABLE_OWNER_PID_LISTENER = 3
ERROR_INSUFFICIENT_BUFFER = 122
SC_MANAGER_CONNECT = 0x0001
SERVICE_QUERY_STATUS = 0x0004
SERVICE_START = 0x0010
SERVICE_STOP = 0x0020
SERVICE_CONTROL_STOP = 0x00000001
SC_STATUS_PROCESS_INFO = 0


class IO_COUNTERS(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("ReadOperationCount", "WriteOperationCount",
                                                     "OtherOperationCount", "ReadTransferCount",
                                                     "WriteTransferCount", "OtherTransferCount")]


class JOBOBJECT_BASIC_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [("PerProcessUserTimeLimit", ctypes.c_int64), ("PerJobUserTimeLimit", ctypes.c_int64),
                ("LimitFlags", ctypes.c_uint32), ("MinimumWorkingSetSize", ctypes.c_size_t),
                ("MaximumWorkingSetSize", ctypes.c_size_t), ("ActiveProcessLimit", ctypes.c_uint32),
                ("Affinity", ctypes.c_size_t), ("PriorityClass", ctypes.c_uint32),
                ("SchedulingClass", ctypes.c_uint32)]


class JOBOBJECT_EXTENDED_LIMIT_INFORMATION(ctypes.Structure):
    _fields_ = [("BasicLimitInformation", JOBOBJECT_BASIC_LIMIT_INFORMATION), ("IoInfo", IO_COUNTERS),
                ("ProcessMemoryLimit", ctypes.c_size_t), ("JobMemoryLimit", ctypes.c_size_t),
                ("PeakProcessMemoryUsed", ctypes.c_size_t), ("PeakJobMemoryUsed", ctypes.c_size_t)]


class THREADENTRY32(ctypes.Structure):
    _fields_ = [("dwSize", ctypes.c_uint32), ("cntUsage", ctypes.c_uint32), ("th32ThreadID", ctypes.c_uint32),
                ("th32OwnerProcessID", ctypes.c_uint32), ("tpBasePri", ctypes.c_int32),
                ("tpDeltaPri", ctypes.c_int32), ("dwFlags", ctypes.c_uint32)]


class FILE_BASIC_INFO(ctypes.Structure):
    _fields_ = [("CreationTime", ctypes.c_int64), ("LastAccessTime", ctypes.c_int64),
                ("LastWriteTime", ctypes.c_int64), ("ChangeTime", ctypes.c_int64),
                ("FileAttributes", ctypes.c_uint32)]


class PROCESSENTRY32W(ctypes.Structure):
    _fields_ = [("dwSize", ctypes.c_uint32), ("cntUsage", ctypes.c_uint32), ("th32ProcessID", ctypes.c_uint32),
                ("th32DefaultHeapID", ctypes.c_size_t), ("th32ModuleID", ctypes.c_uint32),
                ("cntThreads", ctypes.c_uint32), ("th32ParentProcessID", ctypes.c_uint32),
                ("pcPriClassBase", ctypes.c_int32), ("dwFlags", ctypes.c_uint32),
                ("szExeFile", ctypes.c_wchar * 260)]


class MIB_TCPROW_OWNER_PID(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("dwState", "dwLocalAddr", "dwLocalPort", "dwRemoteAddr",
                                                     "dwRemotePort", "dwOwningPid")]


class MIB_TCP6ROW_OWNER_PID(ctypes.Structure):
    _fields_ = [("ucLocalAddr", ctypes.c_ubyte * 16), ("dwLocalScopeId", ctypes.c_uint32),
                ("dwLocalPort", ctypes.c_uint32), ("ucRemoteAddr", ctypes.c_ubyte * 16),
                ("dwRemoteScopeId", ctypes.c_uint32), ("dwRemotePort", ctypes.c_uint32),
                ("dwState", ctypes.c_uint32), ("dwOwningPid", ctypes.c_uint32)]


class SERVICE_STATUS(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("dwServiceType", "dwCurrentState", "dwControlsAccepted",
                                                     "dwWin32ExitCode", "dwServiceSpecificExitCode",
                                                     "dwCheckPoint", "dwWaitHint")]


class SERVICE_STATUS_PROCESS(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint32) for name in ("dwServiceType", "dwCurrentState", "dwControlsAccepted",
                                                     "dwWin32ExitCode", "dwServiceSpecificExitCode",
                                                     "dwCheckPoint", "dwWaitHint", "dwProcessId",
                                                     "dwServiceFlags")]


_HANDLE, _BOOL, _DWORD, _PTR = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_void_p

# name -> (restype, argtypes): every function used, so that a HANDLE is never cut to 32 bits
KERNEL32 = {
    "CreateJobObjectW": (_HANDLE, [_PTR, ctypes.c_wchar_p]),
    "SetInformationJobObject": (_BOOL, [_HANDLE, ctypes.c_int, _PTR, _DWORD]),
    "AssignProcessToJobObject": (_BOOL, [_HANDLE, _HANDLE]),
    "TerminateJobObject": (_BOOL, [_HANDLE, ctypes.c_uint]),
    "OpenProcess": (_HANDLE, [_DWORD, _BOOL, _DWORD]),
    "OpenThread": (_HANDLE, [_DWORD, _BOOL, _DWORD]),
    "ResumeThread": (_DWORD, [_HANDLE]),
    "CreateToolhelp32Snapshot": (_HANDLE, [_DWORD, _DWORD]),
    "Thread32First": (_BOOL, [_HANDLE, _PTR]),
    "Thread32Next": (_BOOL, [_HANDLE, _PTR]),
    "WaitForSingleObject": (_DWORD, [_HANDLE, _DWORD]),
    "TerminateProcess": (_BOOL, [_HANDLE, ctypes.c_uint]),
    "QueryFullProcessImageNameW": (_BOOL, [_HANDLE, _DWORD, ctypes.c_wchar_p, _PTR]),
    "CloseHandle": (_BOOL, [_HANDLE]),
    "CreateFileW": (_HANDLE, [ctypes.c_wchar_p, _DWORD, _DWORD, _PTR, _DWORD, _DWORD, _HANDLE]),
    "GetFileInformationByHandleEx": (_BOOL, [_HANDLE, ctypes.c_int, _PTR, _DWORD]),
    "GetCurrentProcess": (_HANDLE, []),
    "LocalFree": (_PTR, [_PTR]),
    "SetConsoleCtrlHandler": (_BOOL, [_PTR, _BOOL]),
    "GetConsoleWindow": (_HANDLE, []),
    "GetProcessTimes": (_BOOL, [_HANDLE, _PTR, _PTR, _PTR, _PTR]),
    "Process32FirstW": (_BOOL, [_HANDLE, _PTR]),
    "Process32NextW": (_BOOL, [_HANDLE, _PTR]),
}
ADVAPI32 = {
    "OpenProcessToken": (_BOOL, [_HANDLE, _DWORD, _PTR]),
    "GetTokenInformation": (_BOOL, [_HANDLE, ctypes.c_int, _PTR, _DWORD, _PTR]),
    "ConvertSidToStringSidW": (_BOOL, [_PTR, _PTR]),
    "ConvertStringSecurityDescriptorToSecurityDescriptorW": (_BOOL, [ctypes.c_wchar_p, _DWORD, _PTR, _PTR]),
    "GetSecurityDescriptorDacl": (_BOOL, [_PTR, _PTR, _PTR, _PTR]),
    "SetNamedSecurityInfoW": (_DWORD, [ctypes.c_wchar_p, ctypes.c_int, _DWORD, _PTR, _PTR, _PTR, _PTR]),
    "OpenSCManagerW": (_HANDLE, [ctypes.c_wchar_p, ctypes.c_wchar_p, _DWORD]),
    "OpenServiceW": (_HANDLE, [_HANDLE, ctypes.c_wchar_p, _DWORD]),
    "QueryServiceStatusEx": (_BOOL, [_HANDLE, ctypes.c_int, _PTR, _DWORD, _PTR]),
    "ControlService": (_BOOL, [_HANDLE, _DWORD, _PTR]),
    "StartServiceW": (_BOOL, [_HANDLE, _DWORD, _PTR]),
    "CloseServiceHandle": (_BOOL, [_HANDLE]),
}
IPHLPAPI = {"GetExtendedTcpTable": (_DWORD, [_PTR, _PTR, _BOOL, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint32])}
NTDLL: dict[str, tuple[Any, list[Any]]] = {"RtlAreLongPathsEnabled": (ctypes.c_ubyte, [])}


class Win32:
    """``_windows.Win32Api`` over kernel32, advapi32 and ``msvcrt.locking``.

    ``last_error`` and ``win_error`` are ``ctypes.get_last_error`` and ``ctypes.WinError``
    on Windows; ``handler_type`` is the ``WINFUNCTYPE`` of a console control handler.
    """

    def __init__(self, *, kernel32: Any, advapi32: Any, locking: Callable[[int, int, int], None],
                 last_error: Callable[[], int], win_error: Callable[[int], OSError],
                 handler_type: Callable[[Callable[[int], int]], Any], iphlpapi: Any = None, ntdll: Any = None):
        for lib, table in ((kernel32, KERNEL32), (advapi32, ADVAPI32), (iphlpapi, IPHLPAPI), (ntdll, NTDLL)):
            for name, (restype, argtypes) in table.items() if lib is not None else ():
                fn = getattr(lib, name, None)
                if fn is not None:  # (RtlAreLongPathsEnabled: Windows 10 1607 and later)
                    fn.restype, fn.argtypes = restype, argtypes
        self.k32, self.adv, self.iphlp, self.ntdll = kernel32, advapi32, iphlpapi, ntdll
        self._locking, self._last_error, self._win_error = locking, last_error, win_error
        self._handler_type = handler_type
        self._handlers: list[Any] = []  # console handlers must outlive their registration

    def _fail(self, what: str) -> OSError:
        e = self._win_error(self._last_error())
        e.strerror = f"{what}: {e.strerror}"
        return e

    # -- files --------------------------------------------------------------------
    def replace(self, src: str, dst: str) -> None:
        os.replace(src, dst)  # MoveFileExW(MOVEFILE_REPLACE_EXISTING)

    def remove(self, path: str) -> None:
        os.unlink(path)  # DeleteFileW: a sharing violation while another program holds it open

    def locking(self, fd: int, mode: int, nbytes: int) -> None:
        self._locking(fd, mode, nbytes)

    def change_time(self, path: str) -> Optional[int]:
        """NTFS's change time of ``path`` (100 ns ticks; set by the file system on every change
        of the file's data or attributes), None when the file system has none."""
        handle = self.k32.CreateFileW(path, FILE_READ_ATTRIBUTES, FILE_SHARE_ALL, None, OPEN_EXISTING,
                                      FILE_FLAG_BACKUP_SEMANTICS, None)
        if not handle or handle == INVALID_HANDLE_VALUE:
            return None
        try:
            info = FILE_BASIC_INFO()
            if not self.k32.GetFileInformationByHandleEx(handle, FILE_BASIC_INFO_CLASS, ctypes.byref(info),
                                                         ctypes.sizeof(info)):
                return None
            return int(info.ChangeTime) or None
        finally:
            self.k32.CloseHandle(handle)

    def set_owner_only(self, path: str) -> None:
        """Replace ``path``'s DACL by one entry, full control for the current user, and stop
        inheritance from the folder: the file of a private key."""
        sddl = f"D:P(A;;FA;;;{self._user_sid()})"
        descriptor = ctypes.c_void_p()
        if not self.adv.ConvertStringSecurityDescriptorToSecurityDescriptorW(sddl, SDDL_REVISION_1,
                                                                            ctypes.byref(descriptor), None):
            raise self._fail("building the owner-only ACL")
        try:
            present, defaulted, dacl = ctypes.c_int(), ctypes.c_int(), ctypes.c_void_p()
            if not self.adv.GetSecurityDescriptorDacl(descriptor, ctypes.byref(present), ctypes.byref(dacl),
                                                      ctypes.byref(defaulted)):
                raise self._fail("reading the owner-only ACL")
            code = self.adv.SetNamedSecurityInfoW(path, SE_FILE_OBJECT, DACL_SECURITY_INFORMATION
                                                  | PROTECTED_DACL_SECURITY_INFORMATION, None, None, dacl, None)
            if code:
                e = self._win_error(code)
                e.strerror, e.filename = f"setting the owner-only ACL: {e.strerror}", path
                raise e
        finally:
            self.k32.LocalFree(descriptor)

    def _user_sid(self) -> str:
        token = ctypes.c_void_p()
        if not self.adv.OpenProcessToken(self.k32.GetCurrentProcess(), TOKEN_QUERY, ctypes.byref(token)):
            raise self._fail("opening the process token")
        try:
            size = ctypes.c_uint32()
            self.adv.GetTokenInformation(token, TOKEN_USER_CLASS, None, 0, ctypes.byref(size))  # asks the size
            buf = ctypes.create_string_buffer(max(size.value, ctypes.sizeof(ctypes.c_void_p)))
            if not self.adv.GetTokenInformation(token, TOKEN_USER_CLASS, buf, len(buf), ctypes.byref(size)):
                raise self._fail("reading the process token's user")
            sid = ctypes.c_void_p.from_buffer(buf)  # TOKEN_USER starts with the user's PSID
            text = ctypes.c_wchar_p()
            if not self.adv.ConvertSidToStringSidW(sid, ctypes.byref(text)):
                raise self._fail("naming the current user's SID")
            try:
                return str(text.value)
            finally:
                self.k32.LocalFree(text)
        finally:
            self.k32.CloseHandle(token)

    # -- processes ------------------------------------------------------------------
    def popen(self, args: Any, *, creationflags: int, **kwargs: Any) -> subprocess.Popen:
        return subprocess.Popen(args, creationflags=creationflags, **kwargs)

    def create_job(self) -> int:
        job = self.k32.CreateJobObjectW(None, None)
        if not job:
            raise self._fail("creating a job object")
        try:
            self._set_job_limits(job, JOB_OBJECT_LIMIT_KILL_ON_JOB_CLOSE)
        except BaseException:
            self.k32.CloseHandle(job)
            raise
        return int(job)

    def _set_job_limits(self, job: int, flags: int) -> None:
        info = JOBOBJECT_EXTENDED_LIMIT_INFORMATION()
        info.BasicLimitInformation.LimitFlags = flags
        if not self.k32.SetInformationJobObject(job, JOB_OBJECT_EXTENDED_LIMIT_INFORMATION, ctypes.byref(info),
                                                ctypes.sizeof(info)):
            raise self._fail("setting the job's limits")

    def release_job(self, job: int) -> None:
        self._set_job_limits(job, 0)  # closing the job no longer ends what is left in it

    def assign_to_job(self, job: int, pid: int) -> None:
        process = self._open_process(PROCESS_SET_QUOTA | PROCESS_TERMINATE, pid)
        try:
            if not self.k32.AssignProcessToJobObject(job, process):
                raise self._fail(f"putting process {pid} in its job")
        finally:
            self.k32.CloseHandle(process)

    def resume(self, pid: int) -> None:
        """Resume the threads of ``pid``, created suspended (one thread: the main one)."""
        snapshot = self.k32.CreateToolhelp32Snapshot(TH32CS_SNAPTHREAD, 0)
        if not snapshot or snapshot == INVALID_HANDLE_VALUE:
            raise self._fail("listing threads")
        resumed = 0
        try:
            entry = THREADENTRY32()
            entry.dwSize = ctypes.sizeof(entry)
            more = self.k32.Thread32First(snapshot, ctypes.byref(entry))
            while more:
                if entry.th32OwnerProcessID == pid:
                    thread = self.k32.OpenThread(THREAD_SUSPEND_RESUME, False, entry.th32ThreadID)
                    if not thread:
                        raise self._fail(f"opening a thread of process {pid}")
                    try:
                        if self.k32.ResumeThread(thread) == 0xFFFFFFFF:
                            raise self._fail(f"resuming process {pid}")
                        resumed += 1
                    finally:
                        self.k32.CloseHandle(thread)
                more = self.k32.Thread32Next(snapshot, ctypes.byref(entry))
        finally:
            self.k32.CloseHandle(snapshot)
        if not resumed:
            raise OSError(f"process {pid} has no thread to resume")

    def terminate_job(self, job: int, code: int) -> None:
        if not self.k32.TerminateJobObject(job, code):
            raise self._fail("ending a job")

    def close_handle(self, handle: int) -> None:
        self.k32.CloseHandle(handle)

    def _open_process(self, access: int, pid: int) -> int:
        handle = self.k32.OpenProcess(access, False, pid)
        if handle:
            return int(handle)
        code = self._last_error()
        if code == ERROR_INVALID_PARAMETER:
            raise ProcessLookupError(f"no process {pid}")
        if code == ERROR_ACCESS_DENIED:
            raise PermissionError(f"not allowed to open process {pid}")
        raise self._win_error(code)

    def process_alive(self, pid: int) -> bool:
        try:
            handle = self._open_process(PROCESS_QUERY_LIMITED_INFORMATION | SYNCHRONIZE, pid)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # it exists: another user's
        try:
            return bool(self.k32.WaitForSingleObject(handle, 0) == WAIT_TIMEOUT)
        finally:
            self.k32.CloseHandle(handle)

    def process_image(self, pid: int) -> Optional[str]:
        try:
            handle = self._open_process(PROCESS_QUERY_LIMITED_INFORMATION, pid)
        except OSError:
            return None
        try:
            buf = ctypes.create_unicode_buffer(32768)
            size = ctypes.c_uint32(len(buf))
            if not self.k32.QueryFullProcessImageNameW(handle, 0, buf, ctypes.byref(size)):
                return None
            return str(buf.value)
        finally:
            self.k32.CloseHandle(handle)

    def terminate_process(self, pid: int) -> None:
        handle = self._open_process(PROCESS_TERMINATE | SYNCHRONIZE, pid)
        try:
            if not self.k32.TerminateProcess(handle, 1):
                raise self._fail(f"ending process {pid}")
        finally:
            self.k32.CloseHandle(handle)

    def process_created(self, pid: int) -> Optional[int]:
        """When ``pid`` started, as a FILETIME (100 ns ticks since 1601); None: gone or not ours."""
        try:
            handle = self._open_process(PROCESS_QUERY_LIMITED_INFORMATION, pid)
        except OSError:
            return None
        try:
            times = [ctypes.c_uint64() for _ in range(4)]  # creation, exit, kernel, user
            if not self.k32.GetProcessTimes(handle, *(ctypes.byref(t) for t in times)):
                return None
            return int(times[0].value) or None
        finally:
            self.k32.CloseHandle(handle)

    def process_parent(self, pid: int) -> Optional[int]:
        snapshot = self.k32.CreateToolhelp32Snapshot(TH32CS_SNAPPROCESS, 0)
        if not snapshot or snapshot == INVALID_HANDLE_VALUE:
            return None
        try:
            entry = PROCESSENTRY32W()
            entry.dwSize = ctypes.sizeof(entry)
            more = self.k32.Process32FirstW(snapshot, ctypes.byref(entry))
            while more:
                if entry.th32ProcessID == pid:
                    return int(entry.th32ParentProcessID)
                more = self.k32.Process32NextW(snapshot, ctypes.byref(entry))
            return None
        finally:
            self.k32.CloseHandle(snapshot)

    # -- the network -------------------------------------------------------------------
    def tcp_listeners(self) -> list[tuple[str, int, int]]:
        """(local address, port, owning pid) of every listening TCP socket, IPv4 and IPv6
        (GetExtendedTcpTable, TCP_TABLE_OWNER_PID_LISTENER)."""
        found: list[tuple[str, int, int]] = []
        for family, row_type, name in ((AF_INET, MIB_TCPROW_OWNER_PID, socket.AF_INET),
                                       (AF_INET6, MIB_TCP6ROW_OWNER_PID, socket.AF_INET6)):
            data = self._tcp_table(family)
            count = int.from_bytes(data[:4], "little") if len(data) >= 4 else 0
            offset = 4  # the rows follow dwNumEntries (both row types are DWORD-aligned)
            size = ctypes.sizeof(row_type)
            for i in range(count):
                row = row_type.from_buffer_copy(data, offset + i * size)
                port = int.from_bytes(int(row.dwLocalPort & 0xFFFF).to_bytes(2, "little"), "big")
                raw = (int(row.dwLocalAddr).to_bytes(4, "little") if family == AF_INET
                       else bytes(row.ucLocalAddr))
                found.append((socket.inet_ntop(name, raw), port, int(row.dwOwningPid)))
        return found

    def _tcp_table(self, family: int) -> bytes:
        size = ctypes.c_uint32(0)
        for _ in range(5):  # the table may grow between the two calls
            buf = ctypes.create_string_buffer(max(size.value, 4))
            code = self.iphlp.GetExtendedTcpTable(buf, ctypes.byref(size), False, family,
                                                  TCP_TABLE_OWNER_PID_LISTENER, 0)
            if code == 0:
                return bytes(buf.raw)
            if code != ERROR_INSUFFICIENT_BUFFER:
                raise self._win_error(code)
        raise self._win_error(ERROR_INSUFFICIENT_BUFFER)

    # -- services -------------------------------------------------------------------------
    def _service(self, name: str, access: int) -> tuple[int, int]:
        scm = self.adv.OpenSCManagerW(None, None, SC_MANAGER_CONNECT)
        if not scm:
            raise self._fail("connecting to the Service Control Manager")
        service = self.adv.OpenServiceW(scm, name, access)
        if not service:
            e = self._fail(f"opening the service {name}")
            self.adv.CloseServiceHandle(scm)
            raise e
        return scm, service

    def _close_service(self, handles: tuple[int, int]) -> None:
        self.adv.CloseServiceHandle(handles[1])
        self.adv.CloseServiceHandle(handles[0])

    def service_status(self, name: str) -> tuple[int, int]:
        """(dwCurrentState, dwProcessId) of the service (QueryServiceStatusEx)."""
        handles = self._service(name, SERVICE_QUERY_STATUS)
        try:
            status, needed = SERVICE_STATUS_PROCESS(), ctypes.c_uint32()
            if not self.adv.QueryServiceStatusEx(handles[1], SC_STATUS_PROCESS_INFO, ctypes.byref(status),
                                                 ctypes.sizeof(status), ctypes.byref(needed)):
                raise self._fail(f"querying the service {name}")
            return int(status.dwCurrentState), int(status.dwProcessId)
        finally:
            self._close_service(handles)

    def service_stop(self, name: str) -> None:
        handles = self._service(name, SERVICE_STOP | SERVICE_QUERY_STATUS)
        try:
            status = SERVICE_STATUS()
            if not self.adv.ControlService(handles[1], SERVICE_CONTROL_STOP, ctypes.byref(status)):
                raise self._fail(f"stopping the service {name}")
        finally:
            self._close_service(handles)

    def service_start(self, name: str) -> None:
        handles = self._service(name, SERVICE_START | SERVICE_QUERY_STATUS)
        try:
            if not self.adv.StartServiceW(handles[1], 0, None):
                raise self._fail(f"starting the service {name}")
        finally:
            self._close_service(handles)

    def long_paths_enabled(self) -> Optional[bool]:
        """Whether this process may use paths beyond MAX_PATH (the LongPathsEnabled policy, read by
        RtlAreLongPathsEnabled; Python's own manifest declares longPathAware); None: unknown."""
        fn = getattr(self.ntdll, "RtlAreLongPathsEnabled", None) if self.ntdll is not None else None
        return bool(fn()) if fn is not None else None

    # -- the console ------------------------------------------------------------------
    def on_break(self, handler: Callable[[int, Any], None]) -> None:
        signal.signal(SIGBREAK, handler)

    def on_console_event(self, handler: Callable[[int], bool]) -> None:
        callback = self._handler_type(lambda event: 1 if handler(int(event)) else 0)
        if not self.k32.SetConsoleCtrlHandler(callback, True):
            raise self._fail("installing the console handler")
        self._handlers.append(callback)

    def has_console_window(self) -> bool:
        return bool(self.k32.GetConsoleWindow())


def load() -> Win32:
    """The Win32 API of this Windows host."""
    if sys.platform != "win32":
        raise OSError("the Win32 API exists on Windows only")
    import msvcrt  # Windows only: msvcrt.locking

    return Win32(kernel32=ctypes.WinDLL("kernel32", use_last_error=True),
                 advapi32=ctypes.WinDLL("advapi32", use_last_error=True),
                 iphlpapi=ctypes.WinDLL("iphlpapi", use_last_error=True), ntdll=ctypes.WinDLL("ntdll"),
                 locking=msvcrt.locking, last_error=ctypes.get_last_error, win_error=ctypes.WinError,
                 handler_type=ctypes.WINFUNCTYPE(ctypes.c_int, ctypes.c_uint32))

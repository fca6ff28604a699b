"""The folder monitor: picks up each file dropped in a hot folder exactly once.

A scan (on the owner of `folder_monitor`, at every heartbeat) lists each folder with
`os.scandir` (inotify does not fire on NFS or SMB) and, in one fenced transaction per
folder, records every arrival (name, size, mtime, device, inode) as `seen` and claims those
that have stayed the same for the folder's settle time, under the owner's epoch. Only then
is each claimed file renamed into the folder's processing area, after checking (`lstat`, no
symlink followed) that it is still the very file that was claimed.

Handlers run in batches (`handle_files`): one fenced transaction marks a batch's files as
handled by this incarnation, a child process of their own runs the handler on each (its
process group is killed at the handler's timeout, or as soon as the node may no longer act
for the service: `workers.fence.supervision`), each handled file is renamed into `.handled/`
at once (on disk, so a crash never re-runs it), and one transaction records the batch's
outcomes and clears the marks: the done marker. A new owner leaves marked files alone until
their handler is done with them or its lease has run out, so two runs never overlap.

Every file is at any time in the hot folder, in processing under a live claim, handled,
processed, or failed; a new owner adopts the claims of a previous one.

The modules, one job each: `names` (listing a folder, checking names), `ledger` (the
`folder_file` table and every statement on it), `areas` (moving files between the folder's
areas, recovering leftovers), `handler` (the handler child and its pipe), `batch` (handling
a batch), `intake` (the scan and the dispatch of batches), `service` (the
`SingletonService` and the body of its Celery task).
"""

from workers.services.folder_monitor.batch import handle_files
from workers.services.folder_monitor.handler import DEFAULT_HANDLER, accept, load_handler
from workers.services.folder_monitor.intake import dispatch, folder_named, scan
from workers.services.folder_monitor.ledger import in_flight, processed_files
from workers.services.folder_monitor.service import (
    FOLDERS,
    SERVICE,
    FolderMonitorService,
    batch_sender,
    check_folders,
    handle_batch,
)

__all__ = [
    "DEFAULT_HANDLER",
    "FOLDERS",
    "SERVICE",
    "FolderMonitorService",
    "accept",
    "batch_sender",
    "check_folders",
    "dispatch",
    "folder_named",
    "handle_batch",
    "handle_files",
    "in_flight",
    "load_handler",
    "processed_files",
    "scan",
]

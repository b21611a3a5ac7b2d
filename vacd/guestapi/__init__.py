"""The guest interface: what a machine sees over HTTP and what the factory learns from it.

- `contextualise`: writes a new machine's user_data, machine/job features and keys (§6).
- `wire`: HTTP/1.x request heads parsed and responses written, sans I/O, with hard limits.
- `requestpath`: the path rules both servers share (Vac's folding, no tricks).
- `guest`: what the routes know of the requesting machine (GuestMachine, MachineFiles).
- `metadata`: the EC2 and OpenStack metadata documents and routes (169.254.169.254).
- `features`: the Machine/Job Features routes (169.254.169.253).
- `uploadnames`: which `PUT` targets name a $JOBOUTPUTS file (any safe name Vac took).
- `machines`: which machine a source address is, read from the store with a stat cache.
- `joboutputs`: writing a guest's upload, with its quota and the time it was received.
- `joboutputstotal`: all machines' joboutputs bytes, a running total for the disk-wide cap.
- `slotlimits`: each slot's fair share (connections, request bucket, upload memory).
- `acceptor`: accepting connections, resetting refused ones before they cost anything.
- `connection`, `server`: the asyncio HTTP servers that tie these together.

The format modules (`wire`, `requestpath`, `metadata`, `features`,
`uploadnames`) and `slotlimits` do no I/O of their own.
"""

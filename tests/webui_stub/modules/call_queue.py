from modules.fifo_lock import FIFOLock

queue_lock = FIFOLock()  # as A1111 and Forge: no timed acquire

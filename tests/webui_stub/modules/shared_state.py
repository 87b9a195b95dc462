class State:
    skipped = False
    interrupted = False
    stopping_generation = False
    job = ""
    job_no = 0
    job_count = 0
    job_timestamp = "0"
    sampling_step = 0
    sampling_steps = 0
    current_image = None
    textinfo = None

    def begin(self, job="(unknown)"):
        self.job = job
        self.job_count = -1
        self.interrupted = False

    def end(self):
        self.job = ""
        self.job_count = 0

    def interrupt(self):
        self.interrupted = True

    def skip(self):
        self.skipped = True

    def nextjob(self):
        self.job_no += 1

    def dict(self):
        return {"job": self.job, "job_no": self.job_no, "job_count": self.job_count}

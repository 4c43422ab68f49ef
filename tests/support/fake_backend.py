"""A backend whose sampler answers when the test says so: completion order is the test's to pick."""

from concurrent.futures import Future

from tinker import types
from tinker.lib.public_interfaces.api_future import AwaitableConcurrentFuture

PROMPT = types.ModelInput.from_ints([1, 2, 3])
PARAMS = types.SamplingParams(max_tokens=4, seed=7)


def response(*tokens: int) -> types.SampleResponse:
    sequence = types.SampledSequence(
        stop_reason="length", sequence_id="s:0", _tokens_list=list(tokens), _logprobs_list=[-1.0]
    )
    return types.SampleResponse(sequences=[sequence])


class Tokenizer:
    name_or_path = "Org/Model"


class FakeSampler:
    """`pending[i]` is the future of the i-th request; the test completes it."""

    def __init__(self):
        self.pending: list[Future] = []

    def sample(self, prompt, num_samples, sampling_params, **kwargs):
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        self.pending.append(Future())
        return AwaitableConcurrentFuture(self.pending[-1])


class FakeTraining:
    def __init__(self):
        self.sampler = FakeSampler()

    def save_weights_and_get_sampling_client(self, **kwargs):
        future = Future()
        future.set_result(self.sampler)
        return AwaitableConcurrentFuture(future)

    def get_tokenizer(self):
        return Tokenizer()


class FakeService:
    backend_only = "not a recorded method"

    def __init__(self):
        self.training = FakeTraining()

    def create_lora_training_client(self, base_model, rank=32, seed=None, **kwargs):
        future = Future()
        future.set_result(self.training)
        return AwaitableConcurrentFuture(future)

# ruff: noqa: E501  (one sentence pair per line reads better than wrapped strings)
"""Real English sentences for the sentence-embedding benchmark (written for it, no download).

``EVAL_PAIRS``: 20 pairs; the two sentences of a pair say nearly the same thing,
so an embedding that keeps its meaning ranks a sentence's partner above the
other 38 sentences. ``CALIBRATION``: 48 other sentences, never used for parity.
"""

from __future__ import annotations

EVAL_PAIRS: tuple[tuple[str, str], ...] = (
    ("The train to Berlin leaves at seven in the morning.", "Our Berlin train departs at 7 a.m."),
    ("She forgot her umbrella and got soaked on the way home.", "Without an umbrella, she was drenched walking home."),
    ("The recipe calls for two cups of flour and a pinch of salt.", "You need two cups of flour and a little salt for this recipe."),
    ("Stock markets fell sharply after the interest rate announcement.", "Shares dropped steeply once the central bank announced its rate decision."),
    ("My laptop battery drains within an hour.", "The battery in my notebook computer dies after about sixty minutes."),
    ("The museum is closed on Mondays.", "You cannot visit the museum on a Monday."),
    ("He has been learning to play the violin since he was six.", "He started violin lessons at the age of six."),
    ("The doctor advised him to drink more water and rest.", "His physician told him to rest and stay hydrated."),
    ("Heavy snow blocked the mountain pass overnight.", "The mountain road was closed by a night of heavy snowfall."),
    ("Please send me the report by Friday afternoon.", "I need the report from you before Friday evening."),
    ("The children built a sandcastle near the water.", "Kids made a castle out of sand close to the sea."),
    ("This software update fixes a security vulnerability.", "The new patch closes a security hole in the program."),
    ("The cat slept on the warm windowsill all afternoon.", "All afternoon the cat dozed in the sunny window."),
    ("Our flight was delayed by three hours because of fog.", "Fog held our plane on the ground for three hours."),
    ("The library lends books, films and music for free.", "You can borrow books, movies and albums from the library at no cost."),
    ("Regular exercise lowers the risk of heart disease.", "Working out often reduces your chances of cardiovascular illness."),
    ("The bridge was built in 1890 and restored last year.", "Constructed in 1890, the bridge was renovated a year ago."),
    ("I would like a table for two by the window, please.", "Could we have a window table for two people?"),
    ("The company plans to hire fifty engineers next year.", "Next year the firm intends to recruit fifty new engineers."),
    ("Tomatoes grow best in full sun and well-drained soil.", "Tomato plants thrive with lots of sunlight and soil that drains well."),
)

CALIBRATION: tuple[str, ...] = (
    "The meeting has been moved to the large conference room.",
    "Bees play an important role in pollinating crops.",
    "He paid for the groceries with his credit card.",
    "The river flooded the lower part of the town in spring.",
    "Turn left at the second traffic light and park behind the bakery.",
    "The novel was translated into more than thirty languages.",
    "Our team won the regional football championship.",
    "A strong password should contain letters, numbers and symbols.",
    "The orchestra rehearsed the symphony for weeks before the concert.",
    "Electric cars are becoming cheaper to buy and to run.",
    "She painted the kitchen walls a pale shade of green.",
    "The volcano erupted for the first time in two centuries.",
    "Students must submit their essays through the online portal.",
    "The hotel offers free breakfast to all guests.",
    "Wind turbines generate a growing share of the country's electricity.",
    "My grandmother keeps her recipes in a worn notebook.",
    "The printer on the third floor is out of toner again.",
    "Astronomers discovered a planet orbiting a nearby star.",
    "The bakery sells fresh bread every morning at six.",
    "He apologised for arriving late to the interview.",
    "The new law takes effect at the start of next month.",
    "Our dog barks whenever the postman comes to the door.",
    "The hiking trail follows the coast for twelve kilometres.",
    "Vaccines train the immune system to recognise a virus.",
    "The restaurant closed early because the chef was ill.",
    "She measured the room before ordering a new carpet.",
    "The city council voted to expand the bicycle lanes.",
    "Coffee prices rose after a poor harvest in Brazil.",
    "The package should arrive within three to five working days.",
    "A loud thunderstorm kept the whole village awake.",
    "The teacher explained fractions with slices of pizza.",
    "Backups protect your files if the hard drive fails.",
    "The festival attracts thousands of visitors every summer.",
    "He fixed the leaking tap with a new washer.",
    "The documentary follows a family of elephants across the savanna.",
    "Fresh snow makes the ski slopes perfect this weekend.",
    "The bank will be closed on the public holiday.",
    "She learned to code by building small games.",
    "The old lighthouse now serves as a small museum.",
    "Trains are running with delays due to signal failures.",
    "The garden needs watering twice a day in this heat.",
    "Scientists measured the temperature of the deep ocean.",
    "Please keep your ticket until the end of the journey.",
    "The shop assistant helped me find shoes in my size.",
    "Our neighbours are renovating their attic this summer.",
    "The exam results will be published online on Thursday.",
    "A gentle breeze carried the smell of the sea.",
    "The software crashes when the file name contains a space.",
)


def eval_sentences() -> list[str]:
    """The 40 evaluation sentences: pair ``i`` is at rows ``2i`` and ``2i + 1``."""
    return [sentence for pair in EVAL_PAIRS for sentence in pair]

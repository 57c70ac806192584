"""Write data/prompts.json from the hand-written requests below.

Every class (each core tool, and the no-tool set) gets exactly 35% (rounded up) of its
requests held out, chosen by shuffling with ``random.Random(SEED)``; the classes are
shuffled one after another in a fixed order, so the output is byte-identical on every run.

    python data/build_prompts.py [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
from pathlib import Path

SEED = 0
HELDOUT_SHARE = 0.35
OUT = Path(__file__).resolve().parent / "prompts.json"


def _lines(block: str) -> list[str]:
    """One request per non-empty line."""
    return [line.strip() for line in block.strip().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------
# Requests that need exactly one core tool (50 each, in the plan's tool order).
# --------------------------------------------------------------------------------------

GET_WEATHER = _lines("""
What's the weather like in Paris right now?
weather in Tokyo
Is it raining in Seattle at the moment?
How hot is it in Phoenix today?
Could you tell me the current temperature in Oslo?
I'm about to go for a run in Boston. What are the conditions outside right now?
current weather Nairobi
Is it snowing in Denver right now?
How windy is it in Wellington at the moment?
Please check the current weather for Cape Town.
what's it like outside in chicago rn
Do I need a jacket in London right now? Check the current weather there.
Tell me the present weather conditions in Mumbai.
Is it sunny in Barcelona today?
How humid is it in Singapore right now?
Can you get me the weather for Reykjavik, Iceland?
My flight just landed in Dubai. How warm is it there currently?
Whats the temprature in Toronto right now?
Check the weather at my parents' place in Austin, Texas.
Is it foggy in San Francisco this morning?
Current conditions in Buenos Aires, please.
How cold is it in Moscow today?
Give me the current weather in Sydney, Australia.
Is there a thunderstorm going on in Miami right now?
What's the temperature outside in Berlin at the moment, in Celsius?
weather check: Lisbon
I'm heading out to the park in Melbourne. Is it raining there now?
What is the weather currently in Mexico City?
Hey, how's the weather in Seoul right now?
Look up today's weather conditions for Anchorage, Alaska.
Are there clear skies over Athens right now?
What's the wind speed and temperature in Chicago currently?
Tell me if it's hot in Cairo at the moment.
Can you check whether it's drizzling in Dublin right now?
How's the weather looking in Vancouver at this moment?
I want to know the current weather in Kyoto before I go out sightseeing.
Is it freezing in Minneapolis today?
What are the weather conditions in Rome right now?
Get the current weather for zip code 10001.
Is it still snowing in Zurich?
current temp in Las Vegas?
What's the weather doing in Edinburgh at the moment?
Please fetch the current weather for Bangkok, Thailand.
Is it a nice day in Amsterdam right now, weather-wise?
How warm is it in Honolulu right now?
My sister lives in Helsinki. What's the weather like there today?
weather now in Lima peru
Is it cloudy over Manchester right now?
What's the current weather at the Grand Canyon?
Tell me the weather in Nashville right now so I know what to wear.
""")

SEARCH_WEB = _lines("""
Search the web for the best budget mechanical keyboards.
Look up the Louvre's opening hours online.
Find me some online reviews of the Framework Laptop 16.
search the internet for a good vegan lasagna recipe
Can you look up online what the return policy is at IKEA?
Google "how to fix a squeaky door hinge" and tell me what you find.
Find the official website for the Tate Modern.
Search online for tutorials on getting started with Blender.
What do people on the internet say about the Nothing Phone 2? Look it up.
Web search: is the Colosseum open on public holidays?
Please search the web for the system requirements of Baldur's Gate 3.
Look up online whether the 2023 Toyota Prius supports Apple CarPlay.
I need you to search the internet for volunteer opportunities in Portland.
Find a webpage that explains the official rules of pickleball.
Search the web to find out who the current CEO of Nintendo is.
Can you search online for free courses in data visualization?
look up online: best time of year to visit Patagonia
Search the web for the release date of the Steam Deck OLED.
Find me blog posts comparing Notion and Obsidian.
Do a web search for the phone number of the Chicago Public Library.
Search the internet for how to repot a fiddle leaf fig.
Look up on the web what the visa requirements are for US citizens visiting Vietnam.
Search the web for the user manual of the Bosch Series 6 dishwasher.
Find websites that sell second-hand vinyl records in Berlin.
Please google which supermarkets in Leeds stock tamarind paste.
Look up the ticket prices for the Eiffel Tower on its official site.
Search the web for forum threads about the error ERR_CONNECTION_RESET in Chrome.
Find online reviews of the Dyson V15 vacuum.
Search the internet for the history of the Brooklyn Bridge's construction.
Can you find the GitHub page for the requests Python library? Search online.
I'm curious what Wikipedia says about the Voynich manuscript. Can you search for it?
Search the web: does Costco sell gift cards online?
Look up on the internet how long the warranty on an iPhone 15 is.
Browse the web for tips on training a rescue greyhound.
Search the web for the entry requirements of the Boston Marathon.
Hunt down a website that compares electricity providers in Texas.
search for reviews of the movie Dune Part Two on the web
Find the official documentation page for the Rust borrow checker online.
Please do an internet search on the side effects of melatonin supplements.
Look up online what time the British Museum closes on Sundays.
Search the web for campsites along the Appalachian Trail that take reservations.
Can you search the internet for reviews of the Kindle Scribe?
Search online for the official rules of the board game Catan.
web search "best sourdough starter tips"
Find out from the web which museums in Madrid are free on Sundays.
Look up online how to cancel an Amazon Prime membership.
Search the internet to find out when Glastonbury Festival tickets go on sale.
Do a quick search online for the meaning of the slang term "rizz".
Use a web search to find the nutritional info for a Big Mac.
Search the web for companies that make furniture from recycled plastic.
""")

READ_FILE = _lines("""
Read the file notes.txt for me.
What's inside config.yaml?
Show me the contents of /etc/hosts.
Open report_2023.md and tell me what it says.
Can you read todo.txt and show me what's on it?
cat ~/.bashrc for me
Please display the contents of data/users.csv.
I need to see what's written in README.md.
Read me the file meeting_minutes.docx.
Print the contents of src/main.py.
What does the file /var/log/syslog contain?
Load and show me recipe.txt.
Could you open the file called letter_draft.txt and read it to me?
Show the text of LICENSE.
what's in requirements.txt
Read /home/anna/diary/2024-01-15.txt.
Fetch the contents of settings.json so I can check them.
Open package.json and show me what it says.
Please read the file poem.txt and show it to me exactly as written.
Let me see the contents of the file .env.example.
I saved my shopping list as groceries.txt. Can you read it back to me?
Read the beginning of chapter1.txt.
Show me what's written in /tmp/output.log.
Can you open docs/installation.rst and read it?
What's written in the file called ideas.md?
Read back the contents of contacts.vcf.
Open the Dockerfile in this folder and show me its contents.
Display what's in the file budget_notes.txt.
Pull up the text in my file cover_letter.txt.
I want to see the contents of the file index.html.
Read the file test_results.xml.
Please read out the lyrics I saved in song.txt.
What does the Makefile say? Read it for me.
Open ~/Documents/packing_list.txt and tell me what's in it.
show contents of app.log
Read the file "Q3 plan.txt" from my desktop.
Could you read the text file at C:\\Users\\Tom\\notes\\lecture3.txt?
Check what's written in the file version.txt.
Read docker-compose.yml and show me the whole thing.
I'd like to look at the contents of style.css.
Open and read the file feedback_from_client.txt.
Show me the raw contents of data.json.
Please open the file named CHANGELOG and read it out.
Read the transcript I stored in interview_transcript.txt.
Let me see what's in /etc/nginx/nginx.conf.
Read the file called story_draft_v2.txt to me.
Could you print out the contents of .gitignore?
Open the file inventory.txt and show me its text.
what does setup.cfg contain
Read the file at /srv/data/readme_first.txt.
""")

WRITE_FILE = _lines("""
Write "Hello, world!" to a file called hello.txt.
Save the following to notes.txt: buy milk, call the plumber, renew passport.
Create a file named todo.md containing "- finish slides".
Please write this poem into poem.txt: "Roses are red, violets are blue."
Put the text "DEBUG=true" into a file called .env.
Save my meeting notes to meeting_2024_05_02.txt: we agreed to ship version 2 in June.
Overwrite config.ini with the line "[server] port=8080".
Create output.csv with the header row name,age,city.
write 'print("hi")' into script.py
Can you save the phrase "The quick brown fox" to a new file called fox.txt?
Store this recipe in pancakes.txt: 2 eggs, 1 cup flour, 1 cup milk, pinch of salt.
Write a file called README.md with the title "# My Project".
Append "2024-06-01: started running" to training_log.txt.
Please create a text file named address.txt with my address: 12 Elm Street, Springfield.
Save "pack the charger" into the file packing.txt.
Dump the following JSON into settings.json: {"theme": "dark"}
I want to write my journal entry to journal/2024-03-10.txt: "Today was calm and quiet."
Create a new file, ideas.txt, and write "app for swapping houseplants" in it.
Write the words "Out of office until Monday" to status.txt.
Save this list to guests.txt: Maria, Jonas, Priya, Kenji.
Please write "timeout = 30" into client.conf.
Make a file called quote.txt that says "Stay hungry, stay foolish."
Write my cover letter text to cover_letter.txt: "Dear hiring manager, I am excited to apply..."
Save the string 'version: 1.4.2' in the file VERSION.
Put this haiku into haiku.txt: "An old silent pond / a frog jumps in / the sound of water."
Create index.html with the content "<h1>Welcome</h1>".
Record these lap times in laps.txt: 1:32, 1:29, 1:31.
Write a .gitignore file containing "node_modules/".
Could you save "Chapter 1: The Beginning" as the first line of book.txt?
Write the shopping list "eggs, bread, coffee" to a file named shopping.txt.
Save the text below to draft.txt: "We should revisit the pricing model next quarter."
Create a file called greet.sh with the single line: echo hi
Please store my wifi network name "HomeNet5G" in wifi.txt.
Write "TODO: refactor the parser" into a file named TODO.
Save these coordinates to points.txt: (1,2), (3,4), (5,6).
I'd like you to write "Happy birthday, Sam!" into card.txt.
Overwrite the contents of status.log with "OK".
Please write the following line to lyrics.txt: "la la la, sing along".
Make a new file named tasks.txt and write "1. water the plants" in it.
Put "Name: Alice, Role: Editor" into profile.txt.
Save the sentence "Sales rose 4% in Q2" to q2_summary.txt.
Write a YAML file app.yaml containing "debug: false".
Save my grocery budget, "$120 per week", in budget.txt.
Write 'Closed for maintenance' to maintenance.html.
Can you create a file named thanks.txt that says "Thank you all for coming"?
Store the text "Draft 3 approved" in approvals.txt.
Write this limerick to limerick.txt: "There once was a cat from Peru..."
Add the line "export PATH=$HOME/bin:$PATH" to the end of .bashrc.
Save "Meeting moved to room B" into notice.txt.
please write 'hello from the test' into test_output.txt
""")

RUN_CODE = [
    "Run this Python code: print(2 ** 100)",
    "Execute `import sys; print(sys.version)`.",
    "Can you run this snippet and tell me the output? `print([x*x for x in range(10)])`",
    "Run the following Python: import math; print(math.factorial(20))",
    "Execute this code for me:\nfor i in range(3):\n    print('hi', i)",
    "What does `sorted(['pear', 'apple', 'fig'], key=len)` return? Run it in Python to check.",
    "Please execute: `print('abc'[::-1])`",
    "Run `import random; random.seed(1); print(random.randint(1, 100))` and show the result.",
    "I wrote this, can you execute it and see if it crashes? def f(x): return 1/x\nprint(f(0))",
    "Test this Python for me: `print(len(set('mississippi')))`",
    "Execute the Python expression sum(range(1, 1001)) and show what it prints.",
    "Run this and give me the output: import datetime; print(datetime.date(2024, 2, 29).weekday())",
    "Could you run some Python that prints the first 15 Fibonacci numbers?",
    'run python: print("hello world")',
    "Execute this script: x = [3, 1, 2]; x.sort(); print(x)",
    "Please run the code `import json; print(json.dumps({'a': 1}, indent=2))`.",
    "Run this regex in Python and tell me what it finds: import re; print(re.findall(r'\\d+', 'a1b22c333'))",
    "Write and execute a Python check of whether 7919 is prime.",
    "Can you execute this and tell me what error it raises? `int('ten')`",
    "Run the following snippet: `print(' '.join(w.capitalize() for w in 'the old man and the sea'.split()))`",
    "Evaluate this Python code by running it: `print({i: i**3 for i in range(5)})`",
    "Quick: run `print(0.1 + 0.2)` in Python.",
    "Execute this numpy code: import numpy as np; print(np.arange(12).reshape(3, 4))",
    "Run this and show the output:\na = [5, 2, 9, 1]\nfor i in range(len(a)):\n    for j in range(len(a) - 1 - i):\n"
    "        if a[j] > a[j + 1]:\n            a[j], a[j + 1] = a[j + 1], a[j]\nprint(a)",
    "Please run a Python script that prints os.getcwd().",
    "Execute: `from collections import Counter; print(Counter('banana'))`",
    "Could you run this Python and confirm it prints True? print(isinstance(True, int))",
    "Run the code below and tell me how long it takes: import time; t = time.time(); sum(range(10**7)); print(time.time() - t)",
    "execute python code `print(hex(255))`",
    "Run this Python loop and show what it prints:\nn = 5\nwhile n > 0:\n    print(n)\n    n -= 2",
    "Try running `print(list(zip('abc', [1, 2, 3])))` in Python.",
    "Please execute this class definition and call it:\nclass Dog:\n    def speak(self):\n        return 'woof'\nprint(Dog().speak())",
    "Run Python code that prints ord('Q').",
    "Execute `print(\"%.3f\" % 3.14159265)` and show me the output.",
    "Can you run this recursive function with n=6 and print the result? def fact(n): return 1 if n == 0 else n * fact(n - 1)",
    "Run this and tell me if it throws: d = {}; print(d['missing'])",
    "Execute some Python that shuffles the list [1, 2, 3, 4, 5] with random.seed(42) and prints it.",
    "Run the snippet `print(bin(42).count('1'))`.",
    "Execute the following code and report the output: s = 'Hello'; print(s.upper(), s.lower(), s.swapcase())",
    "I'd like you to run this Python: `import statistics; print(statistics.median([3, 9, 4, 7, 1]))`",
    "Run `print(type(3 / 2))` in a Python interpreter.",
    "Please execute: import itertools; print(list(itertools.permutations('abc', 2)))",
    "Run this code to see if my list comprehension works: `evens = [n for n in range(20) if n % 2 == 0]; print(evens)`",
    "Execute python: print(round(2.675, 2))",
    "Can you run a Python snippet that prints the string 'ok' three times on one line?",
    "Run this lambda in Python: print((lambda x, y: x * y)(6, 7))",
    "Execute this in Python and show stdout: print(*range(5), sep='-')",
    "Run the following Python and tell me the result: print('data,science,fun'.split(','))",
    "Can you execute `print(sum(c.isdigit() for c in 'a1b2c3d4'))` for me?",
    "Execute this Python generator example:\ndef gen():\n    yield 1\n    yield 2\nprint(list(gen()))",
]

SEND_EMAIL = _lines("""
Send an email to john@example.com saying the meeting is moved to 3pm.
Email my boss at sarah.lee@acme.com that I'll be late today.
Please send an email to dev-team@company.org with the subject "Release notes" and the body "v2.1 is out."
Shoot an email to mom@family.net: "Landed safely, will call later."
Can you email Dr. Patel (r.patel@clinic.com) and ask to move my appointment?
email alex@startup.io "contract signed, thanks for your patience"
Write and send an email to hr@company.com requesting two days of leave next week.
Send a thank-you email to maria.gonzalez@uni.edu for her recommendation letter.
Email the landlord at landlord@rentals.com that the heating is broken.
Please send an email to support@shopfast.com complaining that my order #4821 never arrived.
Drop an email to kevin@designhub.co telling him the mockups look great.
Send an email to billing@utility.com asking why my bill doubled this month.
Compose and send an email to priya@example.org with subject "Lunch?" asking if she's free Thursday.
Could you email chen.wei@lab.org the message "Samples are ready for pickup"?
Send an email to my professor, j.smith@college.edu, saying I'll miss Friday's lecture.
Email sales@vendor.com requesting a quote for 50 office chairs.
Please send an email to the residents' association (board@oakhoa.org) about the broken gate.
Send an email to Tom at tom.b@gmail.com: "Happy birthday, mate!"
I need to email recruiter@bigcorp.com to accept the job offer.
Send an email to info@museum.org asking whether they offer group tours.
email to ana@studio.pt subject: invoice, body: invoice 2024-17 is ready for payment
Please email my accountant (accounts@taxhelp.com) that I've uploaded the receipts.
Send an email to the whole class at class2025@school.edu letting them know the essay is due Monday.
Send an email to events@venue.com to confirm our booking for 80 guests.
Email Lisa (lisa.m@firm.com) and let her know the report is in the shared drive.
Can you send an email to customer.care@airline.com asking about my lost luggage?
Send an email to coach@runclub.org saying I can't make practice tonight.
Shoot off an email to it-helpdesk@corp.com: my laptop won't boot.
Please email press@newsdaily.com with a short pitch about our new app launch.
Send an email to grandma@oldmail.com with the message "Thinking of you, love you lots."
Send a follow-up email to hiring@techco.com about my application status.
Email ben@agency.co the link to the slides: https://slides.example.com/q3
Could you email the plumber, fixit@pipes.com, asking when he can come over?
Send an email to editor@journal.org submitting my manuscript for review.
Email nina.k@school.org to say Leo will be absent tomorrow because he's sick.
Send an email to feedback@app.com praising the new dark mode.
Please email jorge@partners.mx, subject "Q4 targets", saying we're on track.
Send an email to my roommate sam@dorm.edu asking him to buy toilet paper.
I want to send an email to contact@citycouncil.gov about the pothole on Elm Street.
Email the caterer (orders@tastycater.com) to add two vegetarian meals.
Send an email to volunteers@shelter.org thanking everyone for Saturday.
Email my co-author at l.dupont@inria.fr that the draft is ready for her review.
Send an email to bookings@yogaspace.com asking to cancel my membership.
Send mike@example.com an email titled "Keys" saying I left them under the mat.
Can you email the wedding photographer (hello@snapstudio.com) asking for the full gallery?
Send an email to returns@gadgetstore.com requesting a refund for the broken headphones.
email zoe@friends.net and ask if she wants to go hiking on sunday
Please send a formal email to dean@university.edu requesting an extension on my thesis.
Send an email to security@corp.com reporting a phishing attempt.
Email paul@bandmates.com that rehearsal is cancelled tonight.
""")

GET_CALENDAR = _lines("""
What's on my calendar for tomorrow?
Do I have any meetings on Friday?
Show me my events for March 15.
What do I have scheduled on 2024-07-04?
Check my calendar for next Monday.
Am I free on the afternoon of June 3rd? Look at my calendar.
What's my schedule today?
List my appointments for December 24.
calendar for thursday?
Pull up my calendar for the 12th of next month.
Do I have anything booked on Saturday?
What events are on my calendar on New Year's Day?
Could you check whether I have a dentist appointment on May 9?
Tell me everything scheduled for the day after tomorrow.
What meetings do I have on Wednesday the 21st?
Show my agenda for October 2.
What's happening on my calendar on 9/30?
Is my calendar clear this Sunday?
Look at my calendar and tell me what's on for April 1.
What time is my first meeting tomorrow?
Check if I have any events on the 5th.
Get my calendar events for 14 February.
What did I have on my calendar last Tuesday?
Do I have a conflict on August 18? Check my calendar.
Please show me my calendar for today.
Any events scheduled for Nov 11?
What's on the agenda for me on the 3rd of January?
I think I have a doctor's visit sometime on Thursday. Can you check my calendar for that day?
What does my calendar look like on Monday, September 8?
List everything in my calendar for this coming Tuesday.
Do I have plans on the evening of the 27th according to my calendar?
Show calendar entries for 2025-01-15.
How busy is my calendar on Friday the 13th?
Check my schedule for Christmas Eve.
Tell me what events I've got on 22 March.
What's booked in my calendar for the morning of July 1?
Have I got anything on Saturday the 19th?
Read out my calendar events for the first day of next month.
What appointments are on my calendar on Halloween?
Open my calendar for 6/6 and tell me the events.
Is there a team standup on my calendar for tomorrow?
Which events do I have on Easter Monday?
See what's scheduled on my calendar for the 2nd.
When's my lunch with Dana on Thursday? Check the calendar for that day.
My calendar for May 30, please.
Does my calendar show any events on Labor Day?
Give me a rundown of my calendar on 10 October.
Whats on my calender on monday
Look up my calendar entries for the 28th of this month.
Tell me if there's anything on my calendar on Valentine's Day.
""")

CREATE_REMINDER = _lines("""
Remind me to call mom at 6pm.
Set a reminder to take my medication at 8:00 tomorrow morning.
Create a reminder for March 3 at 9am: submit the tax return.
Remind me at noon to water the plants.
Can you remind me tomorrow at 7:30 to put the bins out?
Please set a reminder for Friday at 4pm to pick up the dry cleaning.
remind me to pay rent on the 1st at 10am
I need a reminder at 3:15 pm today to join the webinar.
Create a reminder to renew my passport on June 10 at 9:00.
Remind me on Sunday at 11am to call grandpa.
Set up a reminder for 5:30 pm: buy flowers for Ana.
Don't let me forget to feed the cat at 7 tonight. Set a reminder.
Make a reminder for tomorrow at 2pm to follow up with the landlord.
Remind me at 9:45 am on Monday to prepare the slides.
Add a reminder for December 20 at 6pm: wrap the presents.
Can you create a reminder at 8pm to stretch before bed?
Remind me on the 15th at noon to check the electricity meter.
Set a reminder for 10 pm tonight to charge my phone.
Remind me Thursday at 1 pm to book a haircut.
Please remind me at 6:30 am to take the chicken out of the freezer.
Create a reminder for 2024-09-01 08:00 called "car inspection".
Remind me at 4 o'clock to print the invoice.
I want a reminder at 11:30 tomorrow to call the bank.
Set a reminder for next Tuesday at 3pm: dentist.
Remind me to stand up and walk around at 2:45 pm.
Could you remind me at 7 pm on Wednesday to watch the game?
reminder 9am tomorrow: give the umbrella back to Jen
Please create a reminder for my mom's birthday on April 4 at 8am.
Remind me at 5 pm to leave for the airport.
Set a reminder at 12:30 to eat lunch, I keep forgetting.
Remind me on Saturday morning at 10 to mow the lawn.
Create a reminder for 6 pm today titled "Gym".
Remind me at 1:00 am to check on the bread dough.
Set a reminder for the 30th at 9 in the morning to cancel the free trial.
At 3 pm tomorrow, remind me to review Jake's pull request.
Can you remind me at 8:15 to grab my lunchbox before leaving?
Please remind me at 7:45 pm to lock the garage.
I'd like a reminder on January 2 at 10am to start my new budget spreadsheet.
Remind me Friday at 5:30 to buy wine for the dinner party.
Create a reminder for tonight at 9 to pack my gym bag.
Set a reminder for 4:20 pm: pick up the kids from school.
Remind me next Monday at 8 am to call the insurance company.
Make a reminder at 2 pm today to defrost the freezer.
Remind me at 10:30 to refill the printer paper.
Set a reminder for tomorrow at 6 pm to return the library books.
remind me to take out the recycling at 7pm wednesday
Please set a reminder at noon on the 22nd to RSVP to the wedding.
Create a reminder for 11 am on Sunday: call Auntie May.
Remind me this evening at 8:30 to practice guitar.
At 9 pm, remind me to lay out my clothes for the next day.
""")

SEARCH_DATABASE = _lines("""
Query the customers table for everyone in California.
How many orders from last month are in the orders database?
Run SELECT * FROM employees WHERE department = 'Sales' against the database.
Find all products in the inventory database with stock below 10.
Look up customer ID 48213 in the database.
Search the database for invoices over $5,000.
Which users signed up after January 1? Query the users table.
Pull the records of all patients born before 1950 from the clinic database.
query db: count rows in transactions where status = 'failed'
Get me every order placed by customer 1187 from our orders table.
Search our product database for items tagged "organic".
Retrieve all employees hired in 2022 from the HR database.
Check the database: which suppliers are based in Germany?
Query the sales table for total revenue by region.
Find the record for order #99812 in the database.
Look in the students table for anyone with a GPA above 3.8.
SELECT name, phone FROM members WHERE active = 1; run that on the membership database.
Search the books database for titles by Ursula K. Le Guin.
Which accounts in the CRM database have had no activity in 90 days?
Query the database for all shipments that left warehouse B12.
Look up the price of SKU 7781-A in the product database.
Find duplicate addresses in the contacts table.
How many rows does the logs table have for yesterday? Query it.
Search the movie database for films released in 1994 with a rating above 8.
Get all tickets from the support database that are still open.
Query the inventory table for the warehouse locations of item 5521.
Pull up every entry in the donations table from donors in Ohio.
Search the employee records database for anyone named Okafor.
Which customers have spent more than $1,000? Check the database.
Query the payments table for refunds issued this week.
Find all rows in the events table where type is 'login_failed'.
Look up in the database which courses have more than 100 enrolled students.
Retrieve the last 20 entries from the audit_log table.
Search the real estate listings database for 3-bedroom houses under $400k.
Query our Postgres database for users without a profile picture.
db lookup: billing address of customer "Acme Corp"
Get the average order value from the orders table grouped by month.
Search the parts database for part number X-220.
Query the library database: which books are currently checked out?
Find all records in the vehicles table with model year 2015.
Search the database for any employee whose contract ends in June.
How many active subscriptions are there in the subscriptions table?
Query the reviews table for products with an average rating below 2.
Look up the shipping status of order 30211 in our orders database.
Pull all leads from the marketing database who came from the spring campaign.
Search the recipes database for dishes that contain chickpeas.
Run a query on the MySQL database to list tables with more than a million rows.
Find the top 5 best-selling products in the sales database.
Which patients in the database have referrals pending approval?
Query the sensors table for devices that haven't reported since Monday.
""")

TRANSLATE_TEXT = _lines("""
Translate "Where is the train station?" into German.
How do you say "thank you very much" in Japanese?
Translate this to Spanish: "I would like a table for two."
What does "je ne sais pas" mean in English?
Please translate the sentence "The meeting starts at nine" into French.
Can you put "Happy birthday, my friend" into Italian?
translate 'guten morgen' to english
Translate "Please close the door" into Korean.
I need this in Portuguese: "Our office will be closed on Friday."
Render "Good luck with your exam" in Dutch.
How would I say "I'm allergic to peanuts" in Thai?
Translate the Chinese phrase 你好吗 into English.
Convert this English text to Russian: "The museum opens at ten."
What's "where is the bathroom" in Greek?
Translate from Swedish to English: "Jag älskar kaffe."
Turn "We are looking forward to working with you" into formal Japanese.
Please translate my message into Arabic: "I'll arrive tomorrow evening."
Translate "cheers" into Polish.
How do you say "I love you" in Hindi?
Translate this Spanish sentence to English: "¿Dónde está la biblioteca?"
Give me the Turkish translation of "How much does this cost?"
Translate into Vietnamese: "Can I pay by card?"
Could you translate "Nice to meet you" into Mandarin Chinese?
What does the Danish word "hygge" translate to in English?
Translate the French idiom "coûter les yeux de la tête" into English.
Translate "Keep out of reach of children" into Spanish and French.
Please translate this German text into English: "Vielen Dank für Ihre schnelle Antwort."
Translate "the invoice is overdue" to Italian.
How do I say "one beer, please" in Czech?
Translate 'ありがとう' from Japanese to English.
Translate this paragraph into Indonesian: "Our hotel offers free breakfast and an airport shuttle."
What's the Hebrew for "good evening"?
Translate "I lost my passport" into Hungarian.
Can you translate "mañana por la mañana" into English?
Translate "How are you feeling today?" into Swahili.
Put this into Norwegian: "The children are playing in the garden."
Translate "We need more time" into Finnish.
What does the Italian "in bocca al lupo" mean in English? Translate it.
Please translate "Do you have a vegetarian menu?" into Romanian.
Translate from English to Ukrainian: "Thank you for your help."
Translate the Latin phrase "carpe diem" into English.
How do you say "excuse me" in Tagalog?
Translate this Korean into English: 감사합니다.
Translate "The package arrived damaged" into German.
Turn this into Brazilian Portuguese: "See you next week!"
Translate "I don't understand" into Irish Gaelic.
translate "where can I buy a ticket" into japanese pls
Translate the Dutch sentence "Ik heb honger" into English.
Could you translate "Congratulations on your new job" into Farsi?
Translate this menu item into English: "Pollo al ajillo con patatas."
""")

TOOL_REQUESTS: dict[str, list[str]] = {
    "get_weather": GET_WEATHER,
    "search_web": SEARCH_WEB,
    "read_file": READ_FILE,
    "write_file": WRITE_FILE,
    "run_code": RUN_CODE,
    "send_email": SEND_EMAIL,
    "get_calendar": GET_CALENDAR,
    "create_reminder": CREATE_REMINDER,
    "search_database": SEARCH_DATABASE,
    "translate_text": TRANSLATE_TEXT,
}

# --------------------------------------------------------------------------------------
# Requests that need no tool: the model answers from its own knowledge or writes freely.
# --------------------------------------------------------------------------------------

FACTUAL = _lines("""
Why is the sky blue?
Who wrote Hamlet?
What is the capital of Australia?
How many bones are in the adult human body?
Who painted the Mona Lisa?
What is the largest planet in the solar system?
When did World War II end?
What's the chemical symbol for gold?
Who was the first person to walk on the Moon?
What language is spoken in Brazil?
How many continents are there?
Which gas do plants absorb from the air?
Who discovered penicillin?
What is the longest river in Africa?
At what temperature does water boil at sea level?
Who composed The Four Seasons?
What is the smallest prime number?
In which country are the pyramids of Giza?
What does DNA stand for?
Who was Cleopatra?
What's the hardest natural substance?
How many players does a soccer team have on the field?
Which planet is known as the Red Planet?
Who invented the telephone?
What is the currency of Japan called?
Which ocean is the largest?
What year did the Berlin Wall fall?
Who wrote Pride and Prejudice?
What is the tallest mountain on Earth?
What's the main ingredient in guacamole?
How many strings does a standard guitar have?
Which element has atomic number 1?
What is the largest mammal?
Who was the first president of the United States?
Where is Machu Picchu?
Roughly how fast does light travel?
Who developed the theory of relativity?
What's the capital of Canada?
How many legs does a spider have?
What is the national animal of Scotland?
Which instrument has 88 keys?
Who wrote One Hundred Years of Solitude?
What is the main language of Quebec?
What do bees make?
Which blood type is the universal donor?
What is the name of the galaxy we live in?
""")

EXPLANATORY = _lines("""
How does a transistor work?
Explain recursion.
Can you explain how vaccines train the immune system?
Why do we have seasons?
What causes tides?
Explain the difference between a virus and a bacterium.
How does a refrigerator keep things cold?
What is inflation and why does it happen?
Explain how photosynthesis works.
How do airplanes stay in the air?
Why does ice float on water?
What's the difference between weather and climate?
Explain what a black hole is in simple terms.
How does compound interest work?
What is the difference between RAM and storage?
How does GPS work out where I am?
Explain object-oriented programming to a beginner.
Why do leaves change colour in autumn?
How do noise-cancelling headphones work?
Explain the concept of supply and demand.
How does the heart pump blood?
What happens during a solar eclipse?
Can you explain how a bill becomes a law in the US?
Why is the ocean salty?
How does encryption keep messages private?
Explain what machine learning is.
How do earthquakes happen?
What is the greenhouse effect?
Explain the rules of chess briefly.
How does a search engine decide how to rank pages?
Why do cats purr?
What's the difference between a simile and a metaphor?
How do batteries store energy?
Explain natural selection.
How does the stock market work?
What is the difference between an LLC and a corporation?
Explain how a bicycle's gears make pedalling easier.
Why do we dream?
How does yeast make bread rise?
Explain the Pythagorean theorem.
How does an index make database lookups faster?
What makes a rainbow appear?
Explain what an API is.
How does the body fight off a common cold?
Why does the Moon have phases?
How do muscles grow after exercise?
""")

OPINION = _lines("""
What's your favourite season?
Is it better to rent or buy a home?
Which is the better pet, a cat or a dog?
Do you think remote work is here to stay?
What's the best way to get good at a new language?
Should I learn Python or JavaScript first?
Is breakfast really the most important meal of the day?
What's the most beautiful word in English, in your opinion?
Are e-readers better than paper books?
Which Beatles album do you like most?
Is it worth getting a master's degree?
Do you prefer mountains or beaches?
What's overrated in modern life?
Is pineapple on pizza acceptable?
What do you think makes a good leader?
Would you rather be able to fly or be invisible?
Is it rude to recline your seat on a plane?
What's the best decade for music?
Should kids have smartphones?
Which superpower would be the most useful?
Is it better to be early or exactly on time?
Do you think handwriting still matters?
What's the most underrated movie genre?
Tabs or spaces?
Is it better to read the book before watching the film?
What's your take on minimalism?
Should I paint my living room grey or green?
Which is more important, talent or hard work?
Do you think people should tip at restaurants?
Is it a good idea to lend money to friends?
What's the best board game of all time?
Are cities or small towns better places to live?
Is it okay to quit a job without another one lined up?
Which is more fun, summer or winter?
What do you think of modern architecture?
Is coffee better than tea?
Should everyone learn to cook?
What makes a song timeless?
Is social media doing more harm than good?
Would you rather live in the past or the future?
Which is the best Star Wars film?
Do you think standardized tests are fair?
Is an electric car worth it for someone who mostly drives in town?
What's the ideal length for a holiday?
Should I take the job with higher pay or the one I'd enjoy more?
""")

CHITCHAT = _lines("""
hi there!
thanks, that was helpful
Good morning!
How are you doing today?
hello
lol that's funny
What's your name?
Nice to meet you.
I'm bored.
Tell me something about yourself.
ok cool
Thank you so much!
Bye for now!
You're pretty smart.
hey, what's up?
I had a long day.
Good night!
Sorry, I didn't mean to be rude.
haha
Can we just chat for a bit?
yo
That makes sense, thanks.
I'm feeling a bit nervous about my interview.
Are you a person or a program?
Great job!
What's new with you?
I just got a puppy!
Happy Friday!
Do you ever get tired?
never mind
Hmm, interesting.
I passed my driving test!
Morning! Ready for another day?
You've been really patient with me.
cheers mate
Can I ask you something random?
I'm back!
Good afternoon.
Wow, I didn't know that.
See you later.
That's all for now, thanks.
I'm so happy right now.
Oops, typo, ignore that.
How's it going?
Do you like talking to people?
""")

CREATIVE = _lines("""
Write a haiku about autumn.
Tell me a short story about a dragon who is afraid of the dark.
Write a limerick about a forgetful cat.
Compose a four-line poem about the ocean.
Give me a funny name for a pet hedgehog.
Write a short bedtime story about a sleepy owl.
Come up with a slogan for a lemonade stand.
Write a sonnet about first love.
Invent a new holiday and describe how people celebrate it.
Tell me a joke about penguins.
Describe a sunset as if you were a pirate.
Write a haiku about a cup of coffee.
Make up a riddle about shadows.
Write the opening line of a mystery novel.
Create a superhero whose power is extreme politeness.
Write a short poem for my grandmother's 90th birthday.
Give me three ideas for a fantasy novel plot.
Write a rap verse about doing laundry.
Describe a city on Mars in a few sentences.
Write a dialogue between a teapot and a kettle.
Come up with a name for a cosy bookshop.
Write a motivational quote about persistence.
Tell a story in exactly six words.
Write a short poem about rain on a tin roof.
Invent a cocktail and give it a clever name.
Write a toast for my best friend's wedding.
Describe the smell of a bakery in poetic language.
Write a fable about a tortoise and a crow.
Compose a lullaby for a baby elephant.
Write a tweet-length ode to pizza.
Create a tongue twister about purple parrots.
Imagine a conversation between Shakespeare and a smartphone.
Write a short horror story set in a library.
Give me a creative writing prompt about time travel.
Write a love letter from the Moon to the Sun.
Write a free-verse poem about city traffic.
Come up with a band name for a jazz trio of grandmothers.
Describe a dream forest with glowing trees.
Write a short speech a dog would give at a dog park.
Make up a fairy tale that starts with "Once upon a time, a cloud fell in love."
Write an acrostic poem for the word SPRING.
Write a short scene where two strangers share an umbrella.
Invent a board game and explain its rules in a paragraph.
Write a villain's monologue about stolen cookies.
Write a four-line poem about homesickness.
Describe winter from the point of view of a snowman.
Pen a short ballad about a lighthouse keeper.
Write a comic strip script about a robot learning to dance.
Write a poem in the form of a recipe for happiness.
Write a cheerful limerick about Mondays.
""")

NO_TOOL_REQUESTS: dict[str, list[str]] = {
    "factual": FACTUAL,
    "explanatory": EXPLANATORY,
    "opinion": OPINION,
    "chitchat": CHITCHAT,
    "creative": CREATIVE,
}


# --------------------------------------------------------------------------------------

def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _heldout(n: int, rng: random.Random) -> set[int]:
    order = list(range(n))
    rng.shuffle(order)
    return set(order[: math.ceil(HELDOUT_SHARE * n)])


def build(seed: int = SEED) -> dict:
    """The prompt file's content; checks counts and duplicates."""
    rng = random.Random(seed)
    prompts = []
    for tool, texts in TOOL_REQUESTS.items():
        assert len(texts) == 50, f"{tool}: {len(texts)} requests, expected 50"
        held = _heldout(len(texts), rng)
        for i, text in enumerate(texts):
            prompts.append({"id": f"{tool}/{i + 1:03d}", "text": text, "tool": tool, "category": "tool",
                            "split": "heldout" if i in held else "train"})
    none = [(cat, text) for cat, texts in NO_TOOL_REQUESTS.items() for text in texts]
    held = _heldout(len(none), rng)
    numbers: dict[str, int] = {}
    for i, (cat, text) in enumerate(none):
        numbers[cat] = numbers.get(cat, 0) + 1
        prompts.append({"id": f"none/{cat}/{numbers[cat]:03d}", "text": text, "tool": None, "category": cat,
                        "split": "heldout" if i in held else "train"})
    seen: dict[str, str] = {}
    for p in prompts:
        key = _norm(p["text"])
        assert key not in seen, f"duplicate request: {p['id']} repeats {seen[key]}"
        seen[key] = p["id"]
    return {"version": 1, "seed": seed, "prompts": prompts}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=OUT, help=f"output file (default {OUT})")
    ap.add_argument("--seed", type=int, default=SEED, help="split seed (default %(default)s)")
    args = ap.parse_args(argv)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        json.dump(build(args.seed), f, indent=1, ensure_ascii=False)
        f.write("\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
